"""Errors raised by training (imported by the CLI to map them to exit codes)."""


class TrainingError(RuntimeError):
    """Training could not run or did not finish; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""
