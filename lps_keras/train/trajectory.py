"""What a resumed run must share with the run its backup came from: the settings of its trajectory.

A run directory's ``backup/`` holds ``trajectory.json``, the recipe's settings that decide the
sequence of weight updates: the seed, the optimiser, the loss, the augmentation, the training images
and the weights it started from. A rerun that changed one of them is refused, naming the field,
instead of continuing the other run under this recipe's name: before this record a rerun with
``--set train.seed=1`` into seed 0's finished run directory re-evaluated seed 0 and reported it as
seed 1.

``RESUMABLE_CHANGES`` are the fields a resumed run may change: how long it runs (a poly schedule then
bends from the resumed step; a shorter length than the backup's step is refused by the run), how
often it logs, validates and backs up, where it reads the same images from, what it evaluates.
Fields that do nothing under the recipe's other settings (OHEM's threshold with plain cross-entropy,
ENet's constant without ENet weights, the other task's section) are left out, so editing them is no
change. ``train.init`` is recorded by content (a file's SHA-256), not by path: the expansion's
workers pass the same grown weights by relative or absolute path. ``train.mixed_precision`` is recorded
as the dtype policy it resolved to (``train.dtype_policy``): ``auto`` is bf16 on one CPU and float32 on
another, so the setting alone would let a backup move between them unnoticed, while ``auto`` and
``none`` on a CPU without bf16 are the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lps_keras.fileio import file_sha256
from lps_keras.recipe import Recipe, dotted
from lps_keras.train.errors import RUN_ADVICE, RunConflictError

#: The file in ``backup/`` recording the recipe settings the backup's trajectory was trained with.
TRAJECTORY_FILE = "trajectory.json"

RESUMABLE_CHANGES = {
    "data": frozenset({"root", "source", "val_split", "val_subset", "eval_size", "cache", "skip_bad_files",
                       "deterministic"}),
    "train": frozenset({"iterations", "val_interval", "checkpoint_interval", "log_interval", "image_summaries",
                        "run_dir", "init", "distribute"}),
    "pretrain": frozenset({"eval_resize"}),
}

#: Per task, the sections and fields that do not reach its weights at all (None: the whole section).
_UNUSED = {
    "train": {"pretrain": None},
    # ImageNet classification: its own crops (pretrain.*) and a plain cross-entropy.
    "pretrain": {"data": {"augment", "synthetic"},
                 "train": {"loss", "loss_label_stride", "ohem_threshold", "ohem_min_kept", "class_balance",
                           "class_weights", "enet_c"}},
}


def _init_identity(init: Optional[str]) -> Optional[str]:
    """None (from scratch) or the start weights' SHA-256 (16 hex digits); "unreadable" when gone."""
    if init is None:
        return None
    try:
        return file_sha256(init)[:16]
    except OSError:
        return "unreadable"


def trajectory_record(recipe: Recipe, task: str = "train", policy: Optional[str] = None) -> dict:
    """The settings of ``recipe`` that decide a ``task`` run's sequence of weight updates (JSON-ready).

    ``policy`` is the dtype policy the run uses (``train.mixed_precision`` resolved on this machine
    when None).
    """
    d = json.loads(json.dumps(recipe.to_dict()))
    record = {}
    for section, free in RESUMABLE_CHANGES.items():
        unused = _UNUSED[task].get(section, set())
        if unused is None:
            continue
        record[section] = {k: v for k, v in d[section].items() if k not in free and k not in unused}
    train = record["train"]
    if train.get("loss") != "ohem":
        train.pop("ohem_threshold", None), train.pop("ohem_min_kept", None)
    if train.get("class_balance") != "enet":
        train.pop("enet_c", None)
    if train.get("class_balance") != "explicit":
        train.pop("class_weights", None)
    if train.get("lr_schedule", "poly") == "poly":  # as backups recorded before the step schedule existed
        for key in ("lr_schedule", "lr_steps", "lr_step_factors"):
            train.pop(key, None)
    else:
        train.pop("poly_power", None)
    if recipe.data.dataset != "synthetic":
        record["data"].pop("synthetic", None)
    if task == "pretrain" and recipe.pretrain.schedule != "poly":
        train.pop("poly_power", None)
    train["init_sha256"] = _init_identity(recipe.train.init)
    if policy is None:
        from lps_keras.train.distribute import resolve_mixed_precision

        policy = resolve_mixed_precision(recipe.train.mixed_precision, family=recipe.model.family)
    # Backups recorded before the resolved policy carry the setting; comparing "auto" with a policy
    # name would refuse them, so the setting goes and only records that have a policy compare it.
    train.pop("mixed_precision", None)
    train["dtype_policy"] = policy
    return record


def check_backup_trajectory(path: Path, recipe: Recipe, work_dir: Path, task: str = "train",
                            policy: Optional[str] = None) -> None:
    """Raise RunConflictError when the backup recorded in ``path`` was trained with other settings."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # a backup written before the record existed: nothing to compare with
    if not isinstance(saved, dict):
        return
    before, now = dotted(saved), dotted(trajectory_record(recipe, task, policy))
    changed = []
    setting = before.get("train.mixed_precision")
    if "train.dtype_policy" not in before and setting not in (None, "auto"):
        # A record from before the resolved policy: an explicit setting resolves the same anywhere ("auto"
        # depended on the machine it ran on, which the record does not say).
        from lps_keras.train.distribute import resolve_mixed_precision

        if resolve_mixed_precision(setting, gpu=False, bf16=True) != now["train.dtype_policy"]:
            changed.append(f"train.mixed_precision {setting!r} -> dtype policy {now['train.dtype_policy']!r}")
    for key, value in now.items():
        if key not in before or before[key] == value:
            continue
        if key == "train.init_sha256" and "unreadable" in (before[key], value) and None not in (before[key], value):
            continue  # started from a file either way; one of the two copies cannot be read to compare
        shown = ("train.init", "from scratch" if before[key] is None else "a file of SHA-256 " + before[key],
                 "from scratch" if value is None else f"{recipe.train.init} (SHA-256 {value})") \
            if key == "train.init_sha256" else (key, repr(before[key]), repr(value))
        changed.append(f"{shown[0]} {shown[1]} -> {shown[2]}")
    if changed:
        raise RunConflictError(
            f"run directory {work_dir} holds a run trained with other settings ({'; '.join(changed)}), which "
            f"resuming would continue under this recipe's name{RUN_ADVICE}")
