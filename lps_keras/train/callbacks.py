"""The callbacks of a training run, sharing one :class:`RunState`.

- :class:`StepTracker`: stops at ``total_steps`` and on a non-finite loss; logs loss and lr.
- :class:`Validator`: full-resolution val mIoU every ``val_interval`` steps, best checkpoint, images.
- :class:`Backup`: Keras' ``BackupAndRestore`` at epoch ends, written atomically (see
  :class:`lps_keras.compat.EpochBackup`), plus ``last.keras`` and ``state.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import keras
import numpy as np
from keras import ops

from lps_keras.compat import EpochBackup
from lps_keras.errors import DiskFullError, is_disk_full
from lps_keras.fileio import atomic_save_model, atomic_write_json, atomic_write_text
from lps_keras.train.summaries import summary_images, summary_scalar


@dataclasses.dataclass
class RunState:
    """Shared between callbacks and written to ``state.json`` with every backup."""

    total_steps: int
    epoch_steps: int
    step: int = 0
    nan_step: Optional[int] = None
    nan_message: str = ""
    best_miou: float = -1.0
    best_step: Optional[int] = None
    last_good_step: Optional[int] = None
    history: list = dataclasses.field(default_factory=list)  # validation records
    last_val: Optional[dict] = None


class Backup(EpochBackup):
    """``BackupAndRestore`` at epoch ends, written atomically, plus ``last.keras`` and ``state.json``.

    Keras writes ``latest.weights.h5`` in place; a SIGKILL during that write would leave a
    corrupt backup, so the file is written beside it and renamed. The initial epoch on restore
    comes from the restored optimizer step (not the metadata file), so weights and position can
    never disagree. Nothing is saved once the loss has gone non-finite.
    """

    def __init__(self, backup_dir, state: RunState, run_dir: Optional[Path], checkpoint_interval: int):
        super().__init__(backup_dir)
        self.state = state
        self.run_dir = run_dir
        self.checkpoint_interval = checkpoint_interval
        self.restored = False

    def restore(self) -> int:
        """Load the backup into ``self.model`` (and its optimizer); returns the restored step."""
        step = self.load_backup(self.state.epoch_steps)
        self.restored = True
        return step

    def on_train_begin(self, logs=None):
        if not self.restored and self.exists():
            self.restore()

    def on_epoch_end(self, epoch, logs=None):
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self.set_current_epoch(epoch + 1)
        if self.state.nan_step is not None:
            return
        if step % self.checkpoint_interval == 0 or step >= self.state.total_steps:
            self.save_backup()
            self.state.last_good_step = step
            if self.run_dir is not None:
                atomic_save_model(self.model, self.run_dir / "last.keras")
                write_state(self.run_dir, self.state, step)


def write_state(run_dir: Path, state: RunState, step: int) -> None:
    atomic_write_json(run_dir / "state.json", {
        "step": step, "total_steps": state.total_steps, "best_miou": state.best_miou, "best_step": state.best_step,
        "history": state.history,
    })


class StepTracker(keras.callbacks.Callback):
    """Stops at ``total_steps`` and on a non-finite loss; logs loss and lr every ``log_interval`` steps."""

    def __init__(self, state: RunState, schedule: keras.optimizers.schedules.LearningRateSchedule,
                 log_interval: int, writer, log_path: Optional[Path]):
        super().__init__()
        self.state = state
        self.schedule = schedule
        self.log_interval = log_interval
        self.writer = writer
        self.log_path = log_path
        self._epoch_start = 0
        self._sum_at_log = 0.0
        self._n_at_log = 0
        self._t_log = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self._sum_at_log, self._n_at_log = 0.0, 0
        self._t_log = time.time()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        n = batch + 1
        step = self._epoch_start + n
        self.state.step = step
        mean = float(ops.convert_to_numpy(logs["loss"])) if "loss" in logs else float("nan")
        if not math.isfinite(mean):
            self.state.nan_step = step
            good = self.state.last_good_step
            self.state.nan_message = (
                f"loss became {mean} at step {step}; training stopped. "
                + (f"The last good checkpoint (step {good}) is kept." if good is not None
                   else "No checkpoint had been written yet.")
                + " Lower train.base_lr or check the data."
            )
            self.model.stop_training = True
            return
        if step % self.log_interval == 0 or step >= self.state.total_steps:
            # Keras reports the running mean over the epoch; recover the mean since the last log.
            total = mean * n
            interval_loss = (total - self._sum_at_log) / max(n - self._n_at_log, 1)
            steps_done = n - self._n_at_log
            self._sum_at_log, self._n_at_log = total, n
            lr = float(ops.convert_to_numpy(self.schedule(step - 1)))
            now = time.time()
            rate = steps_done / max(now - self._t_log, 1e-9)
            self._t_log = now
            record = {"step": step, "loss": interval_loss, "lr": lr, "steps_per_s": rate, "time": now}
            if self.writer is not None:
                with self.writer.as_default():
                    summary_scalar("loss", interval_loss, step)
                    summary_scalar("learning_rate", lr, step)
                    summary_scalar("steps_per_second", rate, step)
            if self.log_path is not None:
                append_log(self.log_path, record)
        if step >= self.state.total_steps:
            self.model.stop_training = True


def append_log(path: Path, record: dict) -> None:
    """One JSON line appended to ``path``; a full disk is a DiskFullError naming it (a resume truncates the log)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(path) from None
        raise


class Validator(keras.callbacks.Callback):
    """Full-resolution val mIoU every ``val_interval`` steps; best checkpoint; image summaries."""

    def __init__(self, state: RunState, val_interval: int, evaluate_fn, run_dir: Optional[Path], writer,
                 image_batch, palette, num_images: int):
        super().__init__()
        self.state = state
        self.val_interval = val_interval
        self.evaluate_fn = evaluate_fn
        self.run_dir = run_dir
        self.writer = writer
        self.image_batch = image_batch
        self.palette = palette
        self.num_images = num_images

    def on_epoch_end(self, epoch, logs=None):
        if self.state.nan_step is not None:
            return
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.val_interval and step < self.state.total_steps:
            return
        t0 = time.time()
        result = self.evaluate_fn(self.model)
        miou = float(result.miou) if math.isfinite(result.miou) else 0.0
        record = {"step": step, "miou": miou, "pixel_accuracy": float(result.pixel_accuracy),
                  "eval_seconds": round(time.time() - t0, 2)}
        self.state.history.append(record)
        self.state.last_val = {"step": step, "result": result}
        print(f"\nstep {step}: val mIoU {100 * miou:.2f}  pixel acc {100 * result.pixel_accuracy:.2f}", flush=True)
        if self.writer is not None:
            with self.writer.as_default():
                summary_scalar("mIoU", miou, step)
                summary_scalar("pixel_accuracy", float(result.pixel_accuracy), step)
                self._image_summaries(step)
            self.writer.flush()
        if miou > self.state.best_miou:
            self.state.best_miou, self.state.best_step = miou, step
            if self.run_dir is not None:
                atomic_save_model(self.model, self.run_dir / "best.keras")

    def _image_summaries(self, step):
        import tensorflow as tf

        from lps_keras.data import denormalize
        from lps_keras.layers import resize_bilinear
        from lps_keras.viz import colorize

        if self.image_batch is None or self.num_images <= 0:
            return
        images, labels = self.image_batch
        k = min(self.num_images, int(images.shape[0]))
        images, labels = images[:k], np.asarray(labels[:k])
        logits = tf.cast(self.model(images, training=False), tf.float32)
        logits = resize_bilinear(logits, labels.shape[1:3])
        preds = np.asarray(tf.argmax(logits, axis=-1))
        summary_images("input", denormalize(np.asarray(images)), step)
        summary_images("ground_truth", colorize(labels, self.palette), step)
        summary_images("prediction", colorize(preds, self.palette), step)


def restore_state(path: Path, state: RunState, step: int) -> None:
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    state.history = [h for h in saved.get("history", []) if h.get("step", 0) <= step]
    best = [h for h in state.history if h.get("miou") is not None]
    if best:
        top = max(best, key=lambda h: h["miou"])
        state.best_miou, state.best_step = top["miou"], top["step"]


def truncate_log(path: Path, step: int) -> None:
    """Drop log records past ``step`` (written by a run that was killed after its last backup)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(k + "\n" for k in kept))
