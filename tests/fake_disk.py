"""A size-capped fake disk for the project's atomic writers (tests only).

``CappedDisk(free).install(monkeypatch)`` replaces ``open`` inside :mod:`lps_keras.fileio`, the one
place that writes the project's files: once :attr:`armed`, writes beyond ``free`` bytes raise
``OSError(ENOSPC)`` as a full disk does, part-way through the file.
"""

import builtins
import errno


class CappedDisk:
    def __init__(self, free: int, armed: bool = True):
        self.free = free
        self.armed = armed
        self.failed: list[str] = []  # the temporary files whose writes failed

    def install(self, monkeypatch) -> "CappedDisk":
        import lps_keras.fileio

        monkeypatch.setattr(lps_keras.fileio, "open", self.open, raising=False)
        return self

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return _Capped(f, self, str(path)) if self.armed and ("w" in mode or "a" in mode) else f


class _Capped:
    def __init__(self, f, disk: CappedDisk, path: str):
        self._f, self._disk, self._path = f, disk, path

    def write(self, data):
        if len(data) > self._disk.free:
            self._f.write(data[: self._disk.free])  # what fits is written, as on a real disk
            self._disk.free = 0
            self._disk.failed.append(self._path)
            raise OSError(errno.ENOSPC, "No space left on device")
        self._disk.free -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
