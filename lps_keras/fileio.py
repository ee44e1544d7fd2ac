"""Atomic writes for every file the project writes for a user.

A file is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written file behind. ``tempfile`` creates 0600 files and 0700 directories; the published
result gets the mode a plain ``open()``/``mkdir`` would have given (umask applied), which matters
for SavedModels read by a TF Serving container running as another user.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed.

    ``suffix`` lets writers that dispatch on the extension (Keras, numpy, Pillow) see the right one.
    A full disk (ENOSPC, also as h5py's or TensorFlow's text) becomes
    :class:`~lps_keras.errors.DiskFullError` naming ``path``; ``path`` itself is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix, dir=path.parent)
    except OSError as e:
        _raise_disk_full(e, path)
        raise
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        _raise_disk_full(e, path)
        raise


def _raise_disk_full(e: BaseException, path) -> None:
    from lps_keras.errors import DiskFullError, is_disk_full

    if isinstance(e, Exception) and not isinstance(e, DiskFullError) and is_disk_full(e):
        raise DiskFullError(path, "nothing half-written was kept") from None


#: Marks the temporary files and staging directories of this module (and of the exporters), with the
#: writer's process id, so that a later run can tell a killed writer's leftovers from live ones.
_TEMP_MARK = ".lpstmp-"


def temp_prefix(name: str) -> str:
    """Prefix for a hidden temporary sibling of ``name`` (for ``mkstemp`` / ``mkdtemp``)."""
    return f".{name}{_TEMP_MARK}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(directory: PathLike) -> list[Path]:
    """Delete the temporary files and staging directories that killed writers left in ``directory``.

    Only entries made by :func:`temp_prefix` whose writer process is gone are removed, so a
    concurrent writer's files are left alone. Returns what was removed.
    """
    import shutil

    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        name = entry.name
        if not name.startswith(".") or _TEMP_MARK not in name:
            continue
        pid_text = name.split(_TEMP_MARK, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue  # a live writer's, possibly this process' own (nested builds)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's content (hex): how a run records an input by content, not by path."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def publish_tree(root: PathLike) -> None:
    """Give a staged directory tree (made with ``mkdtemp``) ordinary permissions before renaming it."""
    root = Path(root)
    os.chmod(root, dir_mode())
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), dir_mode())
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), file_mode())


def atomic_write_json(path: PathLike, obj) -> Path:
    """``obj`` as indented JSON (numpy scalars and arrays, paths; non-finite floats as null)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def atomic_keras_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` with a temporary path that keeps ``path``'s suffixes, then replace."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        try:
            write(tmp)
        except BaseException:
            # A failed h5py write can leave objects that still hold ``tmp`` open and write to it when
            # they are garbage-collected; the next h5py save in the process then segfaulted (rc 139,
            # seen on a full tmpfs). Collect them now, before the file is unlinked.
            import gc

            gc.collect()
            raise
    return path


def atomic_save_model(model, path: PathLike, include_optimizer: bool = True) -> Path:
    """``model.save`` to a ``.keras`` file atomically."""
    return atomic_keras_write(path, lambda tmp: model.save(tmp, include_optimizer=include_optimizer))


#: The lock file a process holds while it owns a directory (see :class:`DirectoryLock`).
LOCK_NAME = ".lps.lock"


class DirectoryLock:
    """One process at a time owns a directory (a run directory, an expansion output, an export version).

    An advisory ``fcntl.flock`` on ``<directory>/.lps.lock``, which also holds the owner's pid for
    the message a second process gets. The kernel drops the lock when its holder dies, ``kill -9``
    included, so a lock left by a dead process is simply taken over; the file itself stays (removing
    it would race with a process that has just opened it). The descriptor is not inherited by
    child processes started with ``subprocess`` (Python opens files non-inheritable).

    Use as a context manager or call :meth:`acquire` / :meth:`release`. ``what`` names the place in
    the error (``"run directory"``, ``"expansion output directory"``, ...).
    """

    def __init__(self, directory: PathLike, what: str = "directory"):
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    def acquire(self) -> DirectoryLock:
        import fcntl

        from lps_keras.errors import BusyError, DiskFullError, is_disk_full

        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BusyError(f"{self.directory}: this {self.what} is in use by process {holder} (another run "
                            f"writes to it); wait for that process to end, or use another {self.what}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as e:
            os.close(fd)
            if is_disk_full(e):
                raise DiskFullError(self.path) from None
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
