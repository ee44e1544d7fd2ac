"""What the export modules share: errors, argument checks, and moving a staged directory into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lps_keras.errors import LPSError, UsageError
from lps_keras.fileio import publish_tree


class ExportError(LPSError, RuntimeError):
    """An export step could not be done; the message says which and why."""


class OutputExistsError(LPSError, FileExistsError):
    """The version (or artefact) to write exists and ``--overwrite`` was not given: one line, exit 2.

    Still a ``FileExistsError`` for callers that catch that; a plain one (no ``filename``) would reach
    the user as a traceback.
    """


class BackendUnavailable(ExportError):
    """A conversion backend (TF-TRT, TensorRT, GPU) is missing on this machine."""


def check_choice(name, value, choices):
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def num_classes_of(model) -> int:
    return int(model.outputs[0].shape[-1])


def move_into_place(src: Path, target: Path, overwrite: bool):
    publish_tree(src)
    if target.exists():
        if not overwrite:
            raise OutputExistsError(f"{target} already exists")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, target)
