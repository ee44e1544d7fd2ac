"""Latency records (:class:`LatencyStats`) and the machine facts they are keyed by: CPU, threads.

A leaf module (it imports no other module of :mod:`lps_keras.latency`): the backend table
(:mod:`.backends`) builds on it, and the per-backend device and version strings are the table's
(:func:`~lps_keras.latency.backends.device_name`, :func:`~lps_keras.latency.backends.library_versions`).

Threads: TensorFlow's intra/inter-op pools are fixed when the runtime first runs an op, so
``threads=`` only takes effect if :func:`~lps_keras.latency.measure_latency` (or
:func:`set_tf_threads`) is called before anything else used TensorFlow. The values actually in
force are always recorded, so a table says what it was measured with. onnxruntime threads are
per session and always apply.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras.errors import LPSError


class LatencyError(LPSError, RuntimeError):
    """A latency backend cannot run here (missing library, GPU, or bad target)."""


class LatencyCacheMiss(LPSError, KeyError):
    """No cached latency and measuring here would not answer the question (foreign device key)."""


@dataclasses.dataclass
class LatencyStats:
    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    iterations: int
    backend: str
    precision: str
    input_shape: tuple
    device: str
    versions: dict
    threads: dict
    warmup: int = 0
    arch_hash: Optional[str] = None

    @classmethod
    def from_times(cls, times_ms, **kw) -> LatencyStats:
        t = np.asarray(times_ms, np.float64)
        return cls(median_ms=float(np.median(t)), mean_ms=float(t.mean()), p90_ms=float(np.percentile(t, 90)),
                   min_ms=float(t.min()), max_ms=float(t.max()), iterations=int(t.size), **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LatencyStats:
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


# --------------------------------------------------------------------------- environment
def set_tf_threads(intra_op: Optional[int], inter_op: Optional[int] = None) -> dict:
    """Set TF's thread pools if TF has not started yet; return the values in force.

    Returns ``{"intra_op": n, "inter_op": m, "applied": bool}`` (0 means TF's default, one per
    core). If TensorFlow already ran an op the request cannot apply and ``applied`` is False.
    """
    import tensorflow as tf

    applied = True
    for setter, value in ((tf.config.threading.set_intra_op_parallelism_threads, intra_op),
                          (tf.config.threading.set_inter_op_parallelism_threads, inter_op)):
        if value is None:
            continue
        try:
            setter(int(value))
        except RuntimeError:  # "... cannot be modified after initialization"
            applied = False
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "applied": applied, "cpu_count": os.cpu_count()}


def cpu_device() -> str:
    """``CPU:<model name> x<cores>``."""
    return f"CPU:{_cpu_model()} x{os.cpu_count()}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The instruction-set extensions that decide which precisions are fast on a CPU.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> dict:
    """Which of AVX2, FMA, AVX-512, AVX512-BF16, VNNI and AMX this CPU has (from /proc/cpuinfo)."""
    flags: set = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {f: f in flags for f in _CPU_FLAGS}


def cpu_flags_text() -> str:
    """``CPU: AMD EPYC x2; avx2 fma (no avx512f avx512_bf16 ...)``: printed beside every benchmark table."""
    have = [f for f, v in cpu_flags().items() if v]
    lacks = [f for f, v in cpu_flags().items() if not v]
    return f"{cpu_device()}; has {' '.join(have) or 'none of them'}" + (f" (no {' '.join(lacks)})" if lacks else "")


def package_versions(package: str, key: Optional[str] = None) -> dict:
    """``{key or package: version}`` of an installed distribution, ``{}`` if it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {key or package: version(package)}
    except PackageNotFoundError:
        return {}


def format_stats(stats: LatencyStats) -> str:
    return (f"{stats.backend}/{stats.precision} {'x'.join(map(str, stats.input_shape))} on {stats.device}: "
            f"median {stats.median_ms:.2f} ms (mean {stats.mean_ms:.2f}, p90 {stats.p90_ms:.2f}, "
            f"min {stats.min_ms:.2f}, max {stats.max_ms:.2f}, n={stats.iterations})")


def time_loop(run, warmup: int, iters: int) -> list[float]:
    """Milliseconds of ``iters`` calls of ``run()`` after ``warmup`` untimed ones (at least one:
    tracing, graph optimisation and engine building are never timed)."""
    import time

    for _ in range(max(warmup, 1)):
        run()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times
