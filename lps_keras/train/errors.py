"""Errors raised by training (user-facing: they derive from :class:`lps_keras.errors.LPSError`)."""

from lps_keras.errors import EXIT_NON_FINITE, LPSError, PermanentError


class TrainingError(LPSError, RuntimeError):
    """Training could not run or did not finish; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched (exit code 3)."""

    exit_code = EXIT_NON_FINITE


#: How every RunConflictError message ends (a caller with other flags, e.g. the expansion, replaces it).
RUN_ADVICE = "; use another --run-dir, or --no-resume to discard it"


class RunConflictError(TrainingError, PermanentError):
    """The run directory holds a backup of another model or of other settings; resuming it would mislabel it.

    Its message ends with :data:`RUN_ADVICE`."""
