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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        write(tmp)
    return path


def atomic_save_model(model, path: PathLike, include_optimizer: bool = True) -> Path:
    """``model.save`` to a ``.keras`` file atomically."""
    return atomic_keras_write(path, lambda tmp: model.save(tmp, include_optimizer=include_optimizer))
