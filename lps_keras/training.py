"""Training: ``model.fit`` on the recipe's data with the paper's schedule, resumable and observable.

Schedule. Training is iteration-based: ``train.iterations`` optimizer steps in Keras "epochs" of
``gcd(val_interval, checkpoint_interval)`` steps, so validation and backups fall on epoch ends.
Keras' ``BackupAndRestore`` restores only at epoch boundaries (the batch index it records is not
used on restore), which is why backups are taken at epoch ends only; a SIGKILL then loses at most
``checkpoint_interval`` steps, and the rerun continues at the backed-up optimizer step with the
same optimizer state (momentum buffers, iteration counter, hence the same learning-rate step)
and the same position in the input stream (the data pipeline skips the examples already consumed,
at the index level, without decoding them).

Optimizer. :class:`TorchSGD` is PyTorch's ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)``
step for step: the L2 term is *coupled* (added to the gradient before the momentum buffer,
``buf = mu * buf + (g + wd * w); w -= lr * buf``) and covers every trainable weight, conv kernels,
biases and BN gamma/beta alike, as ``SGD(model.parameters(), ...)`` does in the official code.
Keras' own ``SGD(weight_decay=...)`` would instead decay decoupled (``w -= lr * wd * w`` outside
the momentum) and keep ``lr`` inside the velocity, which differs once the learning rate decays.

Learning rate. :class:`PolyLR`: ``base_lr * (1 - step / iterations) ** 0.9`` with ``step`` the
number of steps already taken (the first step uses ``base_lr``), optionally times a linear warmup.

Distribution. ``train.distribute``: ``"mirrored"`` (all local GPUs, or the visible logical
devices) or ``"multi_worker"`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``). The recipe's
``batch_size`` is the global batch, split across replicas; BN is synchronised across replicas
whenever there is more than one (or ``model.sync_batchnorm`` asks for it). Only the chief writes
the run directory; other workers write to ``<run_dir>/workers/<id>``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import keras
import numpy as np
from keras import ops

import lps_keras.layers  # noqa: F401 - registers the layers, so importing this module is enough to load checkpoints
import lps_keras.losses  # noqa: F401 - the training checkpoints' compile config names the loss
from lps_keras import fileio
from lps_keras.recipe import Recipe

__all__ = [
    "PolyLR", "TorchSGD", "TrainingError", "NonFiniteLossError", "train", "resolve_run_dir",
    "resolve_mixed_precision", "make_strategy", "init_weights", "atomic_write_text", "atomic_save_model",
]

_PACKAGE = "lps_keras"


class TrainingError(RuntimeError):
    """Training could not run or did not finish; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


# --------------------------------------------------------------------------- schedule
@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolyLR(keras.optimizers.schedules.LearningRateSchedule):
    """``base_lr * (1 - step / total_steps) ** power``, times ``min(1, (step + 1) / warmup_steps)``.

    ``step`` counts the steps already taken, so step 0 (the first update) uses ``base_lr``
    (without warmup) and the rate reaches 0 only after the last step. Steps past ``total_steps``
    give 0.
    """

    def __init__(self, base_lr, total_steps, power=0.9, warmup_steps=0, name="poly_lr"):
        if not base_lr > 0:
            raise ValueError(f"PolyLR base_lr must be > 0, got {base_lr!r}")
        if int(total_steps) < 1:
            raise ValueError(f"PolyLR total_steps must be >= 1, got {total_steps!r}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        frac = ops.clip(step / float(self.total_steps), 0.0, 1.0)
        lr = self.base_lr * ops.power(1.0 - frac, self.power)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr, "total_steps": self.total_steps, "power": self.power,
            "warmup_steps": self.warmup_steps, "name": self.name,
        }


# --------------------------------------------------------------------------- optimizer
@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled L2 weight decay, as ``torch.optim.SGD`` (dampening 0, no Nesterov).

    Per variable: ``g = grad + l2 * w``; ``buf = momentum * buf + g``; ``w -= lr * buf``. The decay
    covers every trainable variable (PyTorch's default for ``model.parameters()``).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=0.0, name="torch_sgd", **kwargs):
        kwargs.pop("weight_decay", None)  # Keras' decoupled decay would apply on top of ours
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"TorchSGD momentum must be in [0, 1], got {momentum!r}")
        if l2 < 0:
            raise ValueError(f"TorchSGD l2 must be >= 0, got {l2!r}")
        self.momentum = float(momentum)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = ops.add(g, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        buf = self.momentums[self._get_variable_index(variable)]
        if self.momentum:
            self.assign(buf, ops.add(ops.multiply(buf, ops.cast(self.momentum, variable.dtype)), g))
            self.assign_sub(variable, ops.multiply(lr, buf))
        else:
            self.assign_sub(variable, ops.multiply(lr, g))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2": self.l2})
        return config


# --------------------------------------------------------------------------- files
def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    return fileio.atomic_write_text(path, text)


def atomic_write_json(path, obj) -> Path:
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


def _atomic_keras_write(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` with a temporary path that keeps ``path``'s suffixes, then replace."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    with fileio.atomic_path(path, suffix=suffix) as tmp:
        write(tmp)
    return path


def atomic_save_model(model: keras.Model, path, include_optimizer: bool = True) -> Path:
    """``model.save`` to a ``.keras`` file atomically."""
    return _atomic_keras_write(path, lambda tmp: model.save(tmp, include_optimizer=include_optimizer))


# --------------------------------------------------------------------------- setup helpers
def resolve_run_dir(recipe: Recipe, run_dir=None) -> Path:
    template = run_dir if run_dir is not None else recipe.train.run_dir
    try:
        return Path(str(template).format(name=recipe.name))
    except (KeyError, IndexError, ValueError) as e:
        raise TrainingError(f"train.run_dir: bad template {template!r} ({e}); only {{name}} is substituted") from None


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_mixed_precision(setting: str) -> str:
    """The Keras dtype policy for ``train.mixed_precision``."""
    if setting == "none":
        return "float32"
    if setting == "auto":
        return "mixed_float16" if _has_gpu() else "mixed_bfloat16"
    if setting in ("mixed_float16", "mixed_bfloat16"):
        return setting
    raise TrainingError(f"train.mixed_precision: {setting!r} is not one of none, auto, mixed_float16, mixed_bfloat16")


def make_strategy(setting: str):
    """``tf.distribute`` strategy for ``train.distribute`` (the default strategy for ``"none"``)."""
    import tensorflow as tf

    if setting == "none":
        return tf.distribute.get_strategy()
    if setting == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        # Cross-device reduction with NCCL needs GPUs; on logical CPU devices use plain copies.
        ops_ = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops_)
    if setting == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise TrainingError("train.distribute='multi_worker' needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingError(f"train.distribute: {setting!r} is not one of none, mirrored, multi_worker")


def _prepare_multi_worker_fit(model: keras.Model, strategy, crop_size) -> None:
    """Work around two bugs of Keras 3's ``fit`` under ``MultiWorkerMirroredStrategy``.

    (keras-team/keras#20585, still in Keras 3.15.) (1) Before the first step ``fit`` reduces the
    first distributed (image, label) batch across workers only to learn its shapes, and that reduce
    raises "Attempt to convert a value (PerReplica...)": the shapes are known from the recipe, so
    the model, loss and metrics are built symbolically here and ``fit``'s own build step is skipped
    for this instance. (2) Each step's logs are reduced with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on the scalar metrics: :func:`_patch_multi_worker_log_reduction` averages them
    across replicas with ``axis=None`` instead. Both are covered by a two-process test; remove once
    Keras fixes them.
    """
    h, w = crop_size
    batch = (np.zeros((1, h, w, 3), "float32"), np.zeros((1, h, w), "int32"))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _patch_multi_worker_log_reduction()


def _patch_multi_worker_log_reduction() -> None:
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_lps_keras_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._lps_keras_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _worker_info(strategy) -> tuple[bool, int]:
    """(is_chief, task id) of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    cluster = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
    if "chief" in cluster:
        return task_type == "chief", task_id
    return task_type == "worker" and task_id == 0, task_id


def environment_info(strategy=None, policy: Optional[str] = None) -> dict:
    import subprocess

    import tensorflow as tf

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "keras_backend": keras.backend.backend(),
        "devices": [{"name": d.name, "type": d.device_type} for d in tf.config.list_logical_devices()],
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "argv": list(sys.argv),
        "dtype_policy": policy,
    }
    if strategy is not None:
        info["strategy"] = type(strategy).__name__
        info["num_replicas"] = int(strategy.num_replicas_in_sync)
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        info["git_commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


# --------------------------------------------------------------------------- initialisation
def init_weights(model: keras.Model, path, verbose: bool = True) -> dict:
    """Initialise ``model`` from a ``.keras`` checkpoint or official LPS-Net weights (``.pth`` / ``.npz``).

    Weights are matched by layer name (the names are shared by the training and deploy forms) and
    shape; layers of other shapes (e.g. a head with another class count) are skipped and
    reported. A deploy-form source block (one 3x3 conv with bias) initialises a training block as
    the equivalent multi-branch block in inference mode: the kernel goes to the 3x3 conv, the
    bias to that branch's BN beta with identity statistics (gamma 1, mean 0, var 1 - eps), the
    1x1 kernel is zeroed and the identity branch's BN gamma is 0.
    """
    from lps_keras.layers import RepConvBlock
    from lps_keras.model import arch_from_model, load_weights_file

    try:
        source = load_weights_file(path, arch_from_model(model))
    except (OSError, ValueError, ImportError) as e:
        raise TrainingError(f"--init: {e}") from None

    loaded, skipped = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            skipped.append(f"{layer.name} (not in source)")
            continue
        if isinstance(layer, RepConvBlock) and isinstance(src, RepConvBlock) and src.deploy and not layer.deploy:
            kernel, bias = src.conv.get_weights()
            if tuple(kernel.shape) != tuple(layer.conv.kernel.shape):
                skipped.append(f"{layer.name} (shape {kernel.shape} vs {tuple(layer.conv.kernel.shape)})")
                continue
            layer.conv.kernel.assign(kernel)
            _set_bn(layer.bn, gamma=1.0, beta=bias)
            if layer.conv_1x1 is not None:
                layer.conv_1x1.kernel.assign(np.zeros(layer.conv_1x1.kernel.shape, "float32"))
                _set_bn(layer.bn_1x1, gamma=1.0, beta=0.0)
            if layer.bn_identity is not None:
                _set_bn(layer.bn_identity, gamma=0.0, beta=0.0)
            loaded.append(layer.name)
            continue
        src_w, dst_w = src.get_weights(), layer.get_weights()
        if len(src_w) != len(dst_w) or any(a.shape != b.shape for a, b in zip(src_w, dst_w)):
            skipped.append(f"{layer.name} (weights {[a.shape for a in src_w]} vs {[b.shape for b in dst_w]})")
            continue
        layer.set_weights(src_w)
        loaded.append(layer.name)
    if not loaded:
        raise TrainingError(f"--init: no layer of {path} matches the model (skipped: {', '.join(skipped[:5])})")
    if verbose:
        print(f"init: {len(loaded)} layers from {path}" + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    return {"path": str(path), "loaded": loaded, "skipped": skipped}


def _set_bn(bn, gamma, beta):
    c = bn.moving_mean.shape[0]
    bn.gamma.assign(np.broadcast_to(np.asarray(gamma, "float32"), (c,)))
    bn.beta.assign(np.broadcast_to(np.asarray(beta, "float32"), (c,)))
    bn.moving_mean.assign(np.zeros((c,), "float32"))
    # var + eps = 1, so the BN is exactly the identity in inference mode.
    bn.moving_variance.assign(np.full((c,), 1.0 - bn.epsilon, "float32"))


# --------------------------------------------------------------------------- summaries
def _summary_metadata(plugin: str, data_class: int):
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    meta.data_class = data_class
    return meta


def summary_scalar(tag: str, value: float, step: int) -> None:
    """``tf.summary.scalar`` without the TensorBoard package (which TF does not depend on).

    Writes the same event TensorBoard's scalar plugin reads, through the core ``tf.summary.write``.
    """
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=_summary_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR))


def summary_images(tag: str, images_uint8: np.ndarray, step: int) -> None:
    """``tf.summary.image`` without TensorBoard: ``[width, height, png, png, ...]`` strings, plugin "images"."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    images = np.asarray(images_uint8, np.uint8)
    pngs = [tf.io.encode_png(img) for img in images]
    h, w = images.shape[1:3]
    tensor = tf.stack([tf.constant(str(w)), tf.constant(str(h)), *pngs])
    tf.summary.write(tag, tensor, step=step,
                     metadata=_summary_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE))


# --------------------------------------------------------------------------- callbacks
@dataclasses.dataclass
class _RunState:
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


class _Backup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` at epoch ends, written atomically, plus ``last.keras`` and ``state.json``.

    Keras writes ``latest.weights.h5`` in place; a SIGKILL during that write would leave a
    corrupt backup, so the file is written beside it and renamed. The initial epoch on restore
    comes from the restored optimizer step (not the metadata file), so weights and position can
    never disagree. Nothing is saved once the loss has gone non-finite.
    """

    def __init__(self, backup_dir, state: _RunState, run_dir: Optional[Path], checkpoint_interval: int, write: bool):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.state = state
        self.run_dir = run_dir
        self.checkpoint_interval = checkpoint_interval
        self.write = write
        self.restored = False

    @property
    def weights_path(self) -> str:
        return self._weights_path

    def exists(self) -> bool:
        return os.path.exists(self._weights_path)

    def restore(self) -> int:
        """Load the backup into ``self.model`` (and its optimizer); returns the restored step."""
        super()._load_model()
        self.restored = True
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self.model._initial_epoch = step // self.state.epoch_steps
        return step

    def on_train_begin(self, logs=None):
        if not self.restored and self.exists():
            self.restore()

    def on_epoch_end(self, epoch, logs=None):
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self._current_epoch = epoch + 1
        if self.state.nan_step is not None:
            return
        if step % self.checkpoint_interval == 0 or step >= self.state.total_steps:
            self._save_model()
            self.state.last_good_step = step
            if self.run_dir is not None:
                atomic_save_model(self.model, self.run_dir / "last.keras")
                _write_state(self.run_dir, self.state, step)

    def _save_model(self):
        if not self.write:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        _atomic_keras_write(self._weights_path, lambda tmp: self.model.save_weights(tmp, overwrite=True))
        atomic_write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": 0})


def _write_state(run_dir: Path, state: _RunState, step: int) -> None:
    atomic_write_json(run_dir / "state.json", {
        "step": step, "total_steps": state.total_steps, "best_miou": state.best_miou, "best_step": state.best_step,
        "history": state.history,
    })


class _StepTracker(keras.callbacks.Callback):
    """Stops at ``total_steps`` and on a non-finite loss; logs loss and lr every ``log_interval`` steps."""

    def __init__(self, state: _RunState, schedule: PolyLR, log_interval: int, writer, log_path: Optional[Path],
                 verbose: bool):
        super().__init__()
        self.state = state
        self.schedule = schedule
        self.log_interval = log_interval
        self.writer = writer
        self.log_path = log_path
        self.verbose = verbose
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
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if step >= self.state.total_steps:
            self.model.stop_training = True


class _Validator(keras.callbacks.Callback):
    """Full-resolution val mIoU every ``val_interval`` steps; best checkpoint; image summaries."""

    def __init__(self, state: _RunState, val_interval: int, evaluate_fn, run_dir: Optional[Path], writer,
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
        summary_images("input", _denormalize(np.asarray(images)), step)
        summary_images("ground_truth", colorize(labels, self.palette), step)
        summary_images("prediction", colorize(preds, self.palette), step)


def _denormalize(images) -> np.ndarray:
    """ImageNet-normalised float images -> uint8 RGB."""
    from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD

    x = np.asarray(images, np.float32) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- train
def _make_evaluate_fn(val_ds, num_classes: int, progress: bool):
    import tensorflow as tf

    from lps_keras.metrics import evaluate_predictions

    def evaluate_fn(model):
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return evaluate_predictions(predict, val_ds, num_classes, ignore_index=255, progress=progress)

    return evaluate_fn


def _truncate_log(path: Path, step: int) -> None:
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


def _epoch_steps(recipe: Recipe) -> int:
    t = recipe.train
    return max(1, min(math.gcd(t.val_interval, t.checkpoint_interval), t.iterations))


def train(
    recipe: Recipe,
    run_dir=None,
    init=None,
    resume: bool = True,
    max_iterations: Optional[int] = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose="auto",
    jit_compile="auto",
) -> dict:
    """Train the recipe's model; returns a summary (also written to ``<run_dir>/metrics.json``).

    Args:
        recipe: a validated :class:`~lps_keras.recipe.Recipe`.
        run_dir: output directory (default ``recipe.train.run_dir`` with ``{name}`` filled in).
        init: ``.keras`` checkpoint or official weights to start from (default ``train.init``);
            ignored when resuming from a backup.
        resume: continue from ``<run_dir>/backup`` if it exists; ``False`` discards it.
        max_iterations: overrides ``train.iterations``.
        callbacks: extra Keras callbacks for ``fit``.
        verbose: Keras progress output (``"auto"``: progress bar on a terminal, one line per
            epoch otherwise).
        jit_compile: passed to ``model.compile``; ``"auto"`` is Keras' choice (XLA) on GPU and off on CPU.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint stays in place).
        TrainingError: bad setup (run directory, --init, distribution).
    """
    import tensorflow as tf

    from lps_keras.data import build_dataset, check_split, unwrap_data_error
    from lps_keras.losses import build_loss
    from lps_keras.model import build_model
    from lps_keras.reparam import reparameterize
    from lps_keras.viz import get_palette

    t_start = time.time()
    recipe.check_classes_cover_dataset()
    if max_iterations is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, iterations=int(max_iterations)))
    cfg = recipe.train
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    total = cfg.iterations
    epoch_steps = _epoch_steps(recipe)
    epochs = math.ceil(total / epoch_steps)

    if jit_compile == "auto" and not _has_gpu():
        # XLA on CPU makes the train step of these small convnets ~6x slower (measured, TF 2.21).
        jit_compile = False
    strategy = make_strategy(cfg.distribute)
    is_chief, task_id = _worker_info(strategy)
    out_dir = resolve_run_dir(recipe, run_dir)
    work_dir = out_dir if is_chief else out_dir / "workers" / str(task_id)
    created_dir = not work_dir.exists()  # a run that fails before its first backup removes what it made
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"run directory {work_dir}: cannot create it ({e})") from None
    # Temporary files of a run that was killed while writing a checkpoint.
    for d in (work_dir, work_dir / "backup"):
        fileio.remove_stale_temps(d)
    files_dir = work_dir if is_chief else None
    log_path = work_dir / "train_log.jsonl"

    policy = resolve_mixed_precision(cfg.mixed_precision)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    writers = []
    backup = None
    try:
        keras.utils.set_random_seed(cfg.seed)
        arch = recipe.arch()
        num_classes = arch.num_classes
        sync_bn = recipe.model.sync_batchnorm or strategy.num_replicas_in_sync > 1
        schedule = PolyLR(cfg.base_lr, total, cfg.poly_power, cfg.warmup_iterations)
        with strategy.scope():
            model = build_model(arch, sync_batchnorm=sync_bn, name=f"lpsnet_{recipe.name}")
            optimizer = TorchSGD(learning_rate=schedule, momentum=cfg.momentum, l2=cfg.weight_decay)
            model.compile(optimizer=optimizer, loss=build_loss(cfg), jit_compile=jit_compile)
            model.optimizer.build(model.trainable_variables)
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            _prepare_multi_worker_fit(model, strategy, recipe.data.augment.crop_size)

        state = _RunState(total_steps=total, epoch_steps=epoch_steps)
        backup = _Backup(work_dir / "backup", state, files_dir, cfg.checkpoint_interval, write=True)
        backup.set_model(model)
        start_step = 0
        if backup.exists() and not resume:
            import shutil

            shutil.rmtree(work_dir / "backup")
            for name in ("train_log.jsonl", "state.json"):
                if (work_dir / name).exists():
                    os.unlink(work_dir / name)
        arch_file = work_dir / "backup" / "arch.json"
        if backup.exists():
            _check_backup_arch(arch_file, arch, work_dir)
            try:
                start_step = backup.restore()
            except ValueError as e:
                raise TrainingError(
                    f"run directory {work_dir} holds a backup that does not fit the recipe's architecture {arch} "
                    f"({str(e).splitlines()[0]}); use --no-resume or another --run-dir") from None
            print(f"resuming from {backup.weights_path} at step {start_step}/{total}", flush=True)
            _restore_state(work_dir / "state.json", state, start_step)
            _truncate_log(log_path, start_step)
        else:
            if log_path.exists():
                os.unlink(log_path)
            init = init if init is not None else cfg.init
            if init:
                init_weights(model, init)
            atomic_write_json(arch_file, arch.to_dict())  # what a resumed run must match
        state.step = start_step
        state.last_good_step = start_step if start_step > 0 else None

        if files_dir is not None:
            atomic_write_text(files_dir / "recipe.json", recipe.to_json() + "\n")
            env = environment_info(strategy, policy)
            env.update({"epoch_steps": epoch_steps, "epochs": epochs, "resumed_from_step": start_step,
                        "sync_batchnorm": sync_bn})
            atomic_write_json(files_dir / "environment.json", env)

        # A resumed run continues the same (example, augmentation seed) stream where the backup
        # left it, so it trains on exactly the batches the uninterrupted run would have seen.
        train_ds = build_dataset(recipe, recipe.data.train_split, training=True, batch_size=cfg.batch_size,
                                 skip_examples=start_step * cfg.batch_size)
        val_ds = build_dataset(recipe, recipe.data.val_split, training=False, batch_size=recipe.eval.batch_size)
        if start_step < total:
            # A bad validation file would otherwise surface only at the first validation, hours in.
            t_check = time.time()
            n_checked = check_split(recipe, recipe.data.val_split)
            if n_checked:
                print(f"checked the {n_checked} {recipe.data.val_split} files ({time.time() - t_check:.1f} s)",
                      flush=True)
        image_batch = next(iter(val_ds.take(1))) if cfg.image_summaries > 0 else None

        tb_dir = work_dir / "tensorboard"
        train_writer = tf.summary.create_file_writer(str(tb_dir / "train")) if is_chief else None
        val_writer = tf.summary.create_file_writer(str(tb_dir / "val")) if is_chief else None
        writers = [w for w in (train_writer, val_writer) if w is not None]
        evaluate_fn = _make_evaluate_fn(val_ds, num_classes, progress=verbose == 1)
        tracker = _StepTracker(state, schedule, cfg.log_interval, train_writer, log_path, verbose)
        validator = _Validator(state, cfg.val_interval, evaluate_fn, files_dir, val_writer, image_batch,
                               get_palette(recipe.data.dataset, num_classes), cfg.image_summaries)
        all_callbacks = [tracker, *callbacks, validator, backup]

        fit_seconds = 0.0
        if start_step < total:
            print(f"training {model.name}: {total} iterations in {epochs} epochs of {epoch_steps} steps, "
                  f"batch {cfg.batch_size}, {strategy.num_replicas_in_sync} replica(s), policy {policy}; "
                  f"run dir {work_dir}", flush=True)
            t_fit = time.time()
            model.fit(train_ds, epochs=epochs, steps_per_epoch=epoch_steps, initial_epoch=start_step // epoch_steps,
                      callbacks=all_callbacks, verbose=verbose, shuffle=False)
            fit_seconds = time.time() - t_fit
        for w in writers:
            w.flush()
        if state.nan_step is not None:
            raise NonFiniteLossError(state.nan_message)

        final_step = int(ops.convert_to_numpy(model.optimizer.iterations))
        if state.last_val is None or state.last_val["step"] != final_step:
            result = evaluate_fn(model)
            state.history.append({"step": final_step, "miou": float(result.miou)})
        else:
            result = state.last_val["result"]
        if files_dir is not None and not (files_dir / "last.keras").exists():
            atomic_save_model(model, files_dir / "last.keras")

        # Fused deploy model, checked against the training model in inference mode.
        deploy = reparameterize(model)
        x = image_batch[0] if image_batch is not None else next(iter(val_ds.take(1)))[0]
        ref = np.asarray(ops.convert_to_numpy(model(x, training=False)), np.float64)
        out = np.asarray(ops.convert_to_numpy(deploy(x, training=False)), np.float64)
        parity = float(np.max(np.abs(ref - out)) / max(np.max(np.abs(ref)), 1e-12))
        print(f"deploy model parity: max relative error {parity:.2e} (training model in inference mode vs fused)",
              flush=True)

        class_names = _class_names(recipe.data.dataset, num_classes)
        summary = {
            "recipe": recipe.name,
            "run_dir": str(out_dir),
            "iterations": total,
            "final_step": final_step,
            "resumed_from_step": start_step,
            "miou": float(result.miou),
            "pixel_accuracy": float(result.pixel_accuracy),
            "mean_class_accuracy": float(result.mean_class_accuracy),
            "best_miou": state.best_miou if state.best_step is not None else None,
            "best_step": state.best_step,
            "history": state.history,
            "deploy_parity_max_rel_error": parity,
            "fit_seconds": round(fit_seconds, 2),
            "wall_seconds": round(time.time() - t_start, 2),
            "images_per_second": (round((final_step - start_step) * cfg.batch_size / fit_seconds, 3)
                                  if fit_seconds > 0 else None),
            "per_class": result.to_dict(class_names)["per_class"],
        }
        if files_dir is not None:
            atomic_save_model(deploy, files_dir / "deploy.keras", include_optimizer=False)
            _write_state(files_dir, state, final_step)
            atomic_write_json(files_dir / "metrics.json", summary)
            print(result.table(class_names), flush=True)
        return summary
    except BaseException as e:
        if created_dir and (backup is None or not backup.exists()):
            # Nothing to resume from: leave no half-made run directory behind.
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)
        data_error = unwrap_data_error(e) if isinstance(e, Exception) else None
        if data_error is not None and data_error is not e:
            # tf.data wraps it in an InvalidArgumentError carrying a 45-line traceback.
            raise data_error from None
        raise
    finally:
        for w in writers:
            w.close()
        keras.config.set_dtype_policy(previous_policy)


def _check_backup_arch(arch_file: Path, arch, work_dir: Path) -> None:
    from lps_keras.arch import Arch

    try:
        saved = Arch.from_dict(json.loads(arch_file.read_text()))
    except (OSError, ValueError):
        return  # a backup written before arch.json existed: the restore itself checks shapes
    if saved != arch:
        raise TrainingError(
            f"run directory {work_dir} holds a backup of architecture {saved} ({saved.num_classes} classes); the "
            f"recipe asks for {arch} ({arch.num_classes} classes): {saved.differences(arch, ('backup', 'recipe'))}. "
            "Use --no-resume or another --run-dir")


def _restore_state(path: Path, state: _RunState, step: int) -> None:
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


def _class_names(dataset: str, num_classes: int) -> list[str]:
    try:
        from lps_keras.data import get_dataset_info

        names = list(get_dataset_info(dataset).class_names)
        if len(names) == num_classes:
            return names
    except (ImportError, AttributeError, KeyError, ValueError):
        pass
    return [str(c) for c in range(num_classes)]
