"""One base for every error a user can cause or fix, and the exit code each kind maps to.

Every module's user-facing errors derive from :class:`LPSError` (``RecipeError``, ``DataError``,
``ExportError``, ``JournalError``, ...), so the command-line entry points map them to one line and
an exit code in one place (:func:`lps_keras.cli.guarded`) instead of listing classes. Anything else
that escapes an entry point is a defect of this project and keeps its traceback (exit code 1).

Exit codes: 2 bad input or an environment the user must fix (a full disk, too little memory, a
directory another process holds), 3 training stopped on a non-finite loss, 130 interrupted.

This module imports nothing heavy: the search and the data readers import it without TensorFlow.
"""

from __future__ import annotations

import errno

#: Exit codes of the entry points (see module doc).
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_INTERRUPTED = 130


class LPSError(Exception):
    """Base of all user-facing errors: reported as one line, the process exits with ``exit_code``."""

    exit_code = EXIT_BAD_INPUT


class PermanentError(LPSError):
    """The same call would fail the same way again (e.g. a run directory holds another run): executors do not
    retry it, and a search stops on it instead of recording a failed candidate and going on without it."""


class UsageError(LPSError, ValueError):
    """A bad command-line value or argument (names the flag and quotes the value)."""


class BusyError(LPSError):
    """A run directory, expansion output or export version is held by another live process."""


class DiskFullError(LPSError, OSError):
    """No space left on the device that holds ``path``; nothing half-written was left behind."""

    def __init__(self, path, detail: str = ""):
        self.path, self.detail = str(path), detail
        text = f"{self.path}: the disk is full (no space left on device)"
        if detail:
            text += f"; {detail}"
        super().__init__(text)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):  # rebuilt from (path, detail), not from the message: a worker's error stays one line
        return type(self), (self.path, self.detail)


class ResourceError(LPSError):
    """The work would not fit this machine's memory (the estimate and the limit are in the message)."""


class PathNameError(LPSError, ValueError):
    """A name that becomes a path component is not a plain file name (see :func:`check_path_name`)."""


#: errno values that mean "the disk (or the user's quota) is full".
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "errno = 28")


def is_disk_full(e: BaseException) -> bool:
    """True for an ``OSError`` (or a library error wrapping one: h5py, TensorFlow) meaning ENOSPC."""
    if isinstance(e, DiskFullError):
        return True
    if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(e).lower()
    return any(t in text for t in _DISK_FULL_TEXTS)


def check_path_name(field: str, value) -> str:
    """``value`` if it can be used as one path component; else a :class:`PathNameError` naming ``field``.

    Refused: empty names, ``.`` and ``..``, path separators, NUL and other control characters, and
    leading dots (hidden files; the project's own temporaries start with a dot).
    """
    if not isinstance(value, str) or not value:
        raise PathNameError(f"{field}: must be a non-empty name, got {value!r}")
    bad = [c for c in value if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    if bad or value in (".", "..") or value.startswith("."):
        raise PathNameError(f"{field}: {value!r} is not a plain name (no '/', '\\', '..', leading '.' or control "
                         "characters): it becomes a file or directory name")
    if len(value.encode("utf-8")) > 200:
        raise PathNameError(f"{field}: {value[:40]!r}... is {len(value.encode('utf-8'))} bytes long; at most 200")
    return value
