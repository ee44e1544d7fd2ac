"""Devices, dtype policy and distribution strategy for a training run, and the environment record.

``train.distribute``: ``"mirrored"`` (all local GPUs, or the visible logical devices) or
``"multi_worker"`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``). The recipe's
``batch_size`` is the global batch, split across replicas. Only the chief writes the run
directory; other workers write to ``<run_dir>/workers/<id>``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import keras
import numpy as np

from lps_keras.train.errors import TrainingError


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    from lps_keras.latency.stats import cpu_flags

    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def resolve_mixed_precision(setting: str, gpu: Optional[bool] = None, bf16: Optional[bool] = None,
                            family: str = "lps") -> str:
    """The Keras dtype policy for ``train.mixed_precision``.

    ``auto``: ``mixed_float16`` on a GPU; on a CPU ``mixed_bfloat16`` only where the CPU has bf16
    hardware (AVX512-BF16 or AMX) and the model ``family`` gains from it (``Family.cpu_bf16``: LPS-Net
    ran 1.55x faster in bf16 on an AVX512-BF16 Zen 4; NDNet and MRMS, mostly depthwise convolutions,
    ran 20-30% slower in bf16 on an AMX Xeon), else ``float32``: on an AVX2-only CPU TensorFlow
    emulates bf16 and runs slower than fp32 (1.22x slower for LPS-S), so ``auto`` never picks it
    there. An explicit ``mixed_bfloat16`` on such a CPU is honoured with a warning. ``gpu`` / ``bf16``
    override the detection (tests).
    """
    if setting == "none":
        return "float32"
    gpu = has_gpu() if gpu is None else gpu
    bf16 = cpu_has_bf16() if bf16 is None else bf16
    if setting == "auto":
        from lps_keras.families import get_family

        return "mixed_float16" if gpu else "mixed_bfloat16" if bf16 and get_family(family).cpu_bf16 else "float32"
    if setting == "mixed_bfloat16" and not gpu and not bf16:
        print("warning: train.mixed_precision=mixed_bfloat16 on a CPU without bf16 hardware (no AVX512-BF16 or AMX): "
              "TensorFlow emulates it, slower than float32; use 'auto' to pick float32 here", file=sys.stderr)
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



def worker_info(strategy) -> tuple[bool, int]:
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
