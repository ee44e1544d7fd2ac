"""``TrainingRun``: one run directory's life, shared by ``train()`` and ``pretrain()``.

A run owns its directory (locked for one process), the Keras dtype policy, the distribution
strategy, the backup it resumes from, the TensorBoard writers and the cleanup after a failure; the
two entry points only say what they train and how they validate.

Schedule. Training is iteration-based: ``train.iterations`` optimizer steps in Keras "epochs" of
``gcd(val_interval, checkpoint_interval)`` steps, so validation and backups fall on epoch ends.
Keras' ``BackupAndRestore`` restores only at epoch boundaries (the batch index it records is not
used on restore), which is why backups are taken at epoch ends only; a SIGKILL then loses at most
``checkpoint_interval`` steps, and the rerun continues at the backed-up optimizer step with the
same optimizer state (momentum buffers, iteration counter, hence the same learning-rate step)
and the same position in the input stream (the data pipeline skips the examples already consumed,
at the index level, without decoding them).

The backup directory holds ``arch.json``: the config the backup was written for (an LPS-Net
architecture as it always was, or ``{"family": ..., "config": ...}`` for another family), so a
rerun with another model is refused naming the difference instead of failing on a shape. It also
holds ``trajectory.json``: the recipe's settings that shape the weights (seed, optimiser, loss,
augmentation, training images), so a rerun that changed one of them is refused too instead of
silently continuing the other run (:mod:`lps_keras.train.trajectory`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import keras
from keras import ops

from lps_keras import fileio
from lps_keras.errors import check_path_name
from lps_keras.fileio import DirectoryLock, atomic_write_json, atomic_write_text
from lps_keras.recipe import Recipe
from lps_keras.train.callbacks import Backup, RunState, restore_state, truncate_log
from lps_keras.train.distribute import environment_info, has_gpu, make_strategy, resolve_mixed_precision, worker_info
from lps_keras.train.errors import RUN_ADVICE, NonFiniteLossError, RunConflictError, TrainingError
from lps_keras.train.trajectory import TRAJECTORY_FILE, check_backup_trajectory, trajectory_record

#: The file in ``backup/`` naming the config the backup belongs to.
CONFIG_FILE = "arch.json"


def resolve_run_dir(recipe: Recipe) -> Path:
    """``train.run_dir`` with ``{name}`` filled in (the name must be a plain file name)."""
    template = recipe.train.run_dir
    if "{name}" in str(template):
        # recipe.name becomes a directory name: "../x" or "a/b" would put the run somewhere else.
        check_path_name("recipe.name", recipe.name)
    try:
        return Path(str(template).format(name=recipe.name))
    except (KeyError, IndexError, ValueError) as e:
        raise TrainingError(f"train.run_dir: bad template {template!r} ({e}); only {{name}} is substituted") from None


def run_settings(verbose, jit_compile) -> tuple:
    """``verbose`` and ``jit_compile`` with ``"auto"`` resolved (what the run passes to Keras)."""
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if jit_compile == "auto" and not has_gpu():
        # XLA on CPU makes the train step of these small convnets ~6x slower (measured, TF 2.21).
        jit_compile = False
    return verbose, jit_compile


def epoch_steps_of(recipe: Recipe) -> int:
    t = recipe.train
    return max(1, min(math.gcd(t.val_interval, t.checkpoint_interval), t.iterations))


def open_run_dir(work_dir: Path) -> tuple[bool, DirectoryLock]:
    """Create ``work_dir``, lock it for this process and remove what killed writers left in it.

    Returns (whether this call created it, the held lock). The lock is taken before any backup
    is read: a second process on the same directory would otherwise resume from the first's live
    backup and both would write the same files. The run releases it at its end, and a run that
    fails before its first backup removes a directory it created while still holding it.
    """
    created = not work_dir.exists()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"run directory {work_dir}: cannot create it ({e})") from None
    lock = DirectoryLock(work_dir, "run directory").acquire()  # BusyError naming the holder's pid
    for d in (work_dir, work_dir / "backup"):  # temporary files of a run killed while writing a checkpoint
        fileio.remove_stale_temps(d)
    return created, lock


def config_record(config) -> dict:
    """What ``backup/arch.json`` stores for ``config`` (an LPS-Net Arch keeps its historical form)."""
    from lps_keras.families import family_of_config

    family = family_of_config(config)
    return config.to_dict() if family.name == "lps" else {"family": family.name, "config": config.to_dict()}


def check_backup_config(config_file: Path, config, work_dir: Path) -> None:
    """Raise TrainingError when the backup beside ``config_file`` was written for another model."""
    from lps_keras.families import FamilyError, describe, family_of_config, get_family

    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return  # a backup written before arch.json existed: the restore itself checks shapes
    try:
        if isinstance(raw, dict) and "family" in raw:
            saved = get_family(raw["family"]).config_type.from_dict(raw["config"])
        else:
            from lps_keras.arch import Arch

            saved = Arch.from_dict(raw)
    except (FamilyError, ValueError, KeyError, TypeError):
        return  # unreadable record: leave it to the restore's shape check
    if saved == config:
        return
    same_family = family_of_config(saved) is family_of_config(config)
    detail = (saved.differences(config, ("backup", "recipe")) if same_family and hasattr(saved, "differences")
              else f"backup {describe(saved)}, recipe {describe(config)}")
    raise RunConflictError(
        f"run directory {work_dir} holds a backup of architecture {describe(saved)} ({saved.num_classes} classes); "
        f"the recipe asks for {describe(config)} ({config.num_classes} classes): {detail}{RUN_ADVICE}")


class TrainingRun:
    """A run of ``recipe.train`` in its run directory; use as a context manager.

    ``with TrainingRun(recipe) as run:`` locks (creating) the directory and sets the dtype policy and
    seed; leaving it closes the writers, restores the policy and releases the lock, and after a
    failure removes a directory this run created and left nothing to resume from. A data error that
    tf.data wrapped in a 45-line InvalidArgumentError leaves as the DataError it is.
    """

    def __init__(self, recipe: Recipe, resume: bool = True, verbose="auto", jit_compile="auto"):
        self.recipe = recipe
        self.resume = resume
        self.verbose, self.jit_compile = run_settings(verbose, jit_compile)
        cfg = recipe.train
        self.total = cfg.iterations
        self.epoch_steps = epoch_steps_of(recipe)
        self.epochs = math.ceil(self.total / self.epoch_steps)
        self.strategy = make_strategy(cfg.distribute)
        self.is_chief, task_id = worker_info(self.strategy)
        self.out_dir = resolve_run_dir(recipe)
        self.work_dir = self.out_dir if self.is_chief else self.out_dir / "workers" / str(task_id)
        self.files_dir = self.work_dir if self.is_chief else None  # workers write nothing the user reads
        self.policy = resolve_mixed_precision(cfg.mixed_precision, family=recipe.model.family)
        self.log_path = self.work_dir / "train_log.jsonl"
        self.state = RunState(total_steps=self.total, epoch_steps=self.epoch_steps)
        self.backup: Backup | None = None
        self.writers: list = []
        self.stack = contextlib.ExitStack()  # extra contexts the caller enters for the run's length
        self.start_step = 0
        self.fit_seconds = 0.0
        self.t_start = time.time()

    # ------------------------------------------------------------------ lifetime
    def __enter__(self):
        self.created, self.lock = open_run_dir(self.work_dir)
        self.previous_policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)
        keras.utils.set_random_seed(self.recipe.train.seed)
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc is not None and (self.backup is None or not self.backup.exists()) and self.created:
                # Still holding the lock: the lock file goes with the directory, so nothing is left behind.
                shutil.rmtree(self.work_dir, ignore_errors=True)
        finally:
            self.stack.close()
            for w in self.writers:
                w.close()
            keras.config.set_dtype_policy(self.previous_policy)
            self.lock.release()
        if isinstance(exc, Exception):
            from lps_keras.data import unwrap_data_error

            data_error = unwrap_data_error(exc)
            if data_error is not None and data_error is not exc:
                raise data_error from None
        return False

    # ------------------------------------------------------------------ resume
    def resume_or_start(self, model, config, init=None, clear_files=(), task: str = "train") -> int:
        """Attach the backup to ``model`` and resume from it, or start fresh; returns the start step.

        ``resume=False`` discards an existing backup with ``train_log.jsonl``, ``state.json`` and
        ``clear_files``. A fresh start calls ``init(model)`` (weights from ``train.init``) and records
        ``config`` in ``backup/arch.json`` and the recipe's ``task`` ("train" or "pretrain") settings
        in ``backup/trajectory.json``; a resume checks both first.
        """
        cfg = self.recipe.train
        self.backup = Backup(self.work_dir / "backup", self.state, self.files_dir, cfg.checkpoint_interval)
        self.backup.set_model(model)
        if self.backup.exists() and not self.resume:
            shutil.rmtree(self.work_dir / "backup")
            for name in ("train_log.jsonl", "state.json", *clear_files):
                (self.work_dir / name).unlink(missing_ok=True)
        config_file = self.work_dir / "backup" / CONFIG_FILE
        start = 0
        if self.backup.exists():
            check_backup_config(config_file, config, self.work_dir)
            check_backup_trajectory(self.work_dir / "backup" / TRAJECTORY_FILE, self.recipe, self.work_dir, task,
                                    self.policy)
            try:
                start = self.backup.restore()
            except ValueError as e:
                from lps_keras.families import describe

                raise RunConflictError(
                    f"run directory {self.work_dir} holds a backup that does not fit the recipe's architecture "
                    f"{describe(config)} ({str(e).splitlines()[0]}){RUN_ADVICE}") from None
            if start > self.total:  # its metrics would describe a longer run under this recipe's length
                raise RunConflictError(
                    f"run directory {self.work_dir} holds a run backed up at step {start}, past train.iterations "
                    f"{self.total}{RUN_ADVICE}")
            print(f"resuming from {self.backup.weights_path} at step {start}/{self.total}", flush=True)
            restore_state(self.work_dir / "state.json", self.state, start)
            truncate_log(self.log_path, start)
        else:
            if self.log_path.exists():
                os.unlink(self.log_path)
            if init is not None:
                init(model)
            atomic_write_json(config_file, config_record(config))  # what a resumed run must match
            atomic_write_json(self.work_dir / "backup" / TRAJECTORY_FILE,
                              trajectory_record(self.recipe, task, self.policy))
        self.start_step = start
        self.state.step = start
        self.state.last_good_step = start if start > 0 else None
        return start

    # ------------------------------------------------------------------ files and writers
    def write_run_files(self, **environment) -> None:
        """``recipe.json`` and ``environment.json`` (with ``environment`` added) in the run directory."""
        if self.files_dir is None:
            return
        atomic_write_text(self.files_dir / "recipe.json", self.recipe.to_json() + "\n")
        env = environment_info(self.strategy, self.policy)
        env.update({"epoch_steps": self.epoch_steps, "epochs": self.epochs, "resumed_from_step": self.start_step,
                    **environment})
        atomic_write_json(self.files_dir / "environment.json", env)

    def make_writers(self):
        """(train, val) TensorBoard writers under ``tensorboard/`` (None, None on a non-chief worker)."""
        if not self.is_chief:
            return None, None
        import tensorflow as tf

        tb_dir = self.work_dir / "tensorboard"
        train_writer = tf.summary.create_file_writer(str(tb_dir / "train"))
        val_writer = tf.summary.create_file_writer(str(tb_dir / "val"))
        self.writers = [train_writer, val_writer]
        return train_writer, val_writer

    # ------------------------------------------------------------------ fit
    def fit(self, model, train_ds, callbacks, description: str) -> int:
        """``model.fit`` from the start step to ``train.iterations``; returns the final optimizer step.

        Raises NonFiniteLossError when the step tracker stopped the run on a NaN/inf loss.
        """
        if self.start_step < self.total:
            print(f"{description}: {self.total} iterations in {self.epochs} epochs of {self.epoch_steps} steps, "
                  f"batch {self.recipe.train.batch_size}, {self.strategy.num_replicas_in_sync} replica(s), "
                  f"policy {self.policy}; run dir {self.work_dir}", flush=True)
            t_fit = time.time()
            model.fit(train_ds, epochs=self.epochs, steps_per_epoch=self.epoch_steps,
                      initial_epoch=self.start_step // self.epoch_steps, callbacks=list(callbacks),
                      verbose=self.verbose, shuffle=False)
            self.fit_seconds = time.time() - t_fit
        for w in self.writers:
            w.flush()
        if self.state.nan_step is not None:
            raise NonFiniteLossError(self.state.nan_message)
        return int(ops.convert_to_numpy(model.optimizer.iterations))

    def timing(self, final_step: int) -> dict:
        """The summary's timing fields."""
        seconds = self.fit_seconds
        return {
            "fit_seconds": round(seconds, 2),
            "wall_seconds": round(time.time() - self.t_start, 2),
            "images_per_second": (round((final_step - self.start_step) * self.recipe.train.batch_size / seconds, 3)
                                  if seconds > 0 else None),
        }
