"""How the command-line entry points run: a quiet TensorFlow start-up and one-line errors.

Every entry point (``train.py``, ``evaluate.py``, ``export.py``, ``predict.py``, ``expand.py``) and
every child process the project starts goes through :func:`quiet_tensorflow` before TensorFlow is
first imported, and wraps its work in :func:`guarded`.

Start-up noise. TensorFlow 2.21's C++ start-up prints ``oneDNN custom operations are on``, ``Could
not find cuda drivers`` and ``failed call to cuInit`` on every CPU-only start. The first two come
from shared-library initialisers that log *before* absl logging is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` cannot silence them (tensorflow/tensorflow#62075). They are filtered here,
at the file-descriptor level, while TensorFlow is imported and the devices are first listed; any
other line written then is passed through. A user who sets ``TF_CPP_MIN_LOG_LEVEL`` themselves gets
TensorFlow's output unfiltered.

Errors. Bad input is the user's to fix, so it gets one line naming the file or field and exit code
2, never a traceback; a bug in this project still shows its traceback. A ``DataError`` raised while
``tf.data`` decodes a file reaches Python wrapped in a TensorFlow ``InvalidArgumentError`` (with a
45-line traceback inside its message); :func:`lps_keras.data.pipeline.unwrap_data_error` recovers it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable

from lps_keras.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NON_FINITE, LPSError, is_disk_full

#: Lines TensorFlow prints on every start of a machine without a usable GPU; nothing to act on.
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cuda_executor\.cc:\d+\] could not find cuda drivers"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
)

_QUIETED = False


def quiet_env(env: dict | None = None) -> dict:
    """``env`` (default ``os.environ``) with TensorFlow's C++ log level set, unless the user set it.

    Pass the result to child processes; they call :func:`quiet_tensorflow` themselves.
    """
    env = os.environ if env is None else env
    if "TF_CPP_MIN_LOG_LEVEL" not in env:
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["LPS_FILTER_TF_STARTUP"] = "1"
    return env


def quiet_tensorflow() -> None:
    """Import TensorFlow and initialise its devices with the start-up noise filtered (see module doc).

    Idempotent; a no-op for the filtering once TensorFlow has been imported.
    """
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    quiet_env()
    if "tensorflow" in sys.modules or os.environ.get("LPS_FILTER_TF_STARTUP") != "1":
        return
    with _filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # cuInit happens here on the first call


class CapturedStderr:
    """File descriptor 2 into a temporary file while the block runs; replayed on exit through
    ``transform`` (default: as it was), or dropped after :meth:`discard`.

    At the descriptor level, so the output of C++ libraries (TensorFlow's start-up, Ray's connection
    attempts) is caught too, not only Python's ``sys.stderr``.
    """

    def __init__(self, transform: Callable[[str], str] = lambda text: text):
        self.transform = transform
        self._keep = True

    def __enter__(self):
        sys.stderr.flush()
        try:
            self._saved = os.dup(2)
        except OSError:  # no fd 2 (embedded interpreter): nothing to capture
            self._saved = None
            return self
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._tmp.fileno(), 2)
        return self

    def discard(self) -> None:
        self._keep = False

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        text = self._tmp.read().decode("utf-8", errors="replace")
        self._tmp.close()
        kept = self.transform(text) if self._keep else ""
        if kept:
            print(kept, file=sys.stderr, end="" if kept.endswith("\n") else "\n", flush=True)
        return False


def _filtered_stderr() -> CapturedStderr:
    """Standard error with TensorFlow's start-up noise removed (see the module doc)."""
    return CapturedStderr(strip_startup_noise)


def strip_startup_noise(text: str) -> str:
    """``text`` (a child process' stderr, say) without TensorFlow's start-up lines."""
    return "\n".join(line for line in text.splitlines() if line.strip() and not _NOISE.search(line))


def exit_process(code: int) -> None:
    """End an entry point with ``code``.

    After a Python exception inside a ``tf.data`` map (a broken file), the interpreter's shutdown
    can wait forever on tf.data's iterator threads (0% CPU, futex wait; seen with TF 2.21 on a
    third of such runs; the shutdown-time destructor race of tensorflow/tensorflow#21277). Every
    file this project writes is complete by then (atomic writes, writers closed), so such a
    process ends with ``os._exit`` after flushing its output.
    """
    data_pipeline = sys.modules.get("lps_keras.data.pipeline")
    if data_pipeline is not None and data_pipeline.data_errors_raised():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def flag_overrides(overrides, flags) -> list[str]:
    """``overrides`` plus one ``key=<JSON value>`` per ``(key, value)`` flag that was given (not None): the
    CLIs' flags become ``--set`` overrides, the one way configuration enters a recipe."""
    out = list(overrides)
    out += [f"{key}={json.dumps(value)}" for key, value in flags if value is not None]
    return out


def run_training_command(prog: str, recipe_path, overrides, train_fn: Callable, summary: Callable[[dict], str]) -> int:
    """What ``train.py`` and ``pretrain.py`` share: load the recipe, run ``train_fn(recipe)``, map its exits.

    Exit codes: 0 done (``summary(result)`` printed), 2 bad recipe / data / setup, 3 the loss went
    non-finite (the last good checkpoint is kept), 130 interrupted (rerun to resume). Errors are
    reported by :func:`guarded` (this function runs inside it).
    """
    from lps_keras.recipe import load_recipe

    try:
        recipe = load_recipe(recipe_path, overrides)
        result = train_fn(recipe)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume from the last backup", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary(result))
    return 0


def guarded(prog: str, fn: Callable[[], int]) -> int:
    """Run ``fn()``; user-facing errors and interrupts become one line on stderr and an exit code.

    Returns ``fn()``'s exit code; for an :class:`~lps_keras.errors.LPSError` its ``exit_code`` (2 for
    bad input, 3 for a non-finite loss); 2 for a missing or unreadable file, a full disk or memory
    running out; 130 for Ctrl-C. Anything else is a defect of ours and keeps its traceback.
    """
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
        described = describe_error(e)
        if described is None:
            raise
        message, code = described
        label = "training stopped" if code == EXIT_NON_FINITE else "error"
        print(f"{prog}: {label}: {message}", file=sys.stderr)
        return code


def describe_error(e: BaseException) -> tuple[str, int] | None:
    """``(one-line message, exit code)`` for an error the user can fix, ``None`` for a defect of ours."""
    data_pipeline = sys.modules.get("lps_keras.data.pipeline")
    if data_pipeline is not None:
        data_error = data_pipeline.unwrap_data_error(e)
        if data_error is not None:
            return _one_line(data_error), data_error.exit_code
    if isinstance(e, LPSError):
        return _one_line(e), e.exit_code
    if is_disk_full(e):
        path = getattr(e, "filename", None) or _path_in(str(e)) or "the output"
        return f"{path}: the disk is full (no space left on device); nothing half-written was kept", EXIT_BAD_INPUT
    if isinstance(e, MemoryError) or type(e).__name__ == "ResourceExhaustedError":
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "MemoryError"
        return (f"out of memory ({detail[:200]}); use a smaller batch or input size, or a machine with more memory",
                EXIT_BAD_INPUT)
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}", EXIT_BAD_INPUT  # not "[Errno 2] No such file or directory: 'x'"
    return None


def _one_line(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    return text.strip() or type(e).__name__


def _path_in(text: str) -> str | None:
    match = re.search(r"(?:name|file|path)\s*=\s*'([^']+)'", text) or re.search(r"'(/[^']+)'", text)
    return match.group(1) if match else None
