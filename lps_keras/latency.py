"""Latency measurement, a persistent latency cache, and the ``arch -> ms`` function the search uses.

Honest timing rules: warm-up runs (which include tracing, graph optimisation, engine building)
are never timed; every timed iteration ends with the result copied to the host (``.numpy()``),
which synchronises a GPU; the median is the reported figure.

Threads: TensorFlow's intra/inter-op pools are fixed when the runtime first runs an op, so
``threads=`` only takes effect if :func:`measure_latency` (or :func:`set_tf_threads`) is called
before anything else used TensorFlow. The values actually in force are always recorded, so a
table says what it was measured with. onnxruntime threads are per session and always apply.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Union

import numpy as np

from lps_keras.arch import Arch
from lps_keras.fileio import atomic_write_text

BACKENDS = ("tf", "onnxruntime", "tftrt", "tensorrt", "macs")


class LatencyError(RuntimeError):
    """A latency backend cannot run here (missing library, GPU, or bad target)."""


class LatencyCacheMiss(KeyError):
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


def device_name(backend: str = "tf") -> str:
    """GPU model name for GPU backends / TF with a GPU, else the CPU model and core count."""
    if backend in ("tf", "tftrt"):
        try:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"GPU:{details.get('device_name', gpus[0].name)}"
        except Exception:  # device query is best effort
            pass
    if backend == "tensorrt":
        try:
            from cuda import cudart

            _, props = cudart.cudaGetDeviceProperties(0)
            return f"GPU:{props.name.decode()}"
        except Exception:
            return "GPU:unknown"
    return f"CPU:{_cpu_model()} x{os.cpu_count()}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(backend: str) -> dict:
    versions = {}
    if backend in ("tf", "tftrt"):
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    if backend == "onnxruntime":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    if backend == "tensorrt":
        try:
            import tensorrt

            versions["tensorrt"] = tensorrt.__version__
        except ImportError:
            pass
    if backend == "macs":
        versions["macs"] = "1"
    return versions


# --------------------------------------------------------------------------- measuring
def _time_loop(run: Callable[[], object], warmup: int, iters: int) -> list[float]:
    for _ in range(max(warmup, 1)):  # at least one: tracing/compilation is never timed
        run()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _as_keras_model(target, precision):
    from lps_keras.model import build_model

    if isinstance(target, Arch):
        model = build_model(target, deploy=True)
    else:
        model = target
    if precision == "bf16":
        from lps_keras.export import bf16_model

        model = bf16_model(model)
    elif precision != "fp32":
        raise LatencyError(f"precision {precision!r} is not supported by this backend (fp32, bf16)")
    return model


def _arch_hash(target) -> Optional[str]:
    if isinstance(target, Arch):
        return target.hash
    if isinstance(target, (str, os.PathLike)):
        return None
    try:
        from lps_keras.model import arch_from_model

        return arch_from_model(target).hash
    except Exception:
        return None


def measure_latency(
    target,
    backend: str = "tf",
    input_shape=(1, 1024, 2048, 3),
    warmup: int = 5,
    iters: int = 20,
    precision: str = "fp32",
    threads: Optional[int] = None,
    cache: Optional[LatencyCache] = None,
) -> LatencyStats:
    """Time one forward pass of ``target`` at ``input_shape`` (NHWC).

    Args:
        target: an :class:`Arch` (deploy model with random weights: latency does not depend on
            weights), a Keras model (float32 normalised input -> logits), a SavedModel directory
            from :mod:`lps_keras.export` (its ``serving_default``: uint8 in, labels + outputs),
            an ``.onnx`` file (onnxruntime / tensorrt) or a TensorRT ``.engine`` file.
        backend: ``tf`` (TensorFlow on the current device), ``onnxruntime`` (CPU EP),
            ``tftrt`` (TF-TRT SavedModel; TF 2.17 + GPU), ``tensorrt`` (TensorRT 10 + GPU),
            ``macs`` (no timing: GMACs of the Arch, deterministic, for tests and dry runs).
        precision: ``fp32``; ``bf16`` (tf) or ``fp16`` (tensorrt/tftrt).
        threads: intra-op threads (TF: only if set before TF started; onnxruntime: per session).
        cache: a :class:`LatencyCache`; hit -> no measurement, miss -> measured and stored.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; known: {', '.join(BACKENDS)}")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (N, H, W, 3), got {input_shape!r}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters!r}, warmup={warmup!r}")
    arch = target if isinstance(target, Arch) else None
    if cache is not None and arch is not None:
        hit = cache.lookup(arch, backend, precision, input_shape)
        if hit is not None:
            return hit

    if backend == "macs":
        if arch is None:
            try:
                from lps_keras.model import arch_from_model

                arch = arch_from_model(target)
            except Exception:
                raise LatencyError("the macs backend needs an Arch or an LPS-Net Keras model") from None
        gmacs = input_shape[0] * arch.macs(input_shape[1], input_shape[2]) / 1e9
        stats = LatencyStats.from_times([gmacs], backend="macs", precision=precision, input_shape=input_shape,
                                        device="analytic", versions=library_versions("macs"), threads={},
                                        warmup=0, arch_hash=arch.hash)
    else:
        runner = {"tf": _tf_runner, "onnxruntime": _ort_runner, "tftrt": _tftrt_runner,
                  "tensorrt": _tensorrt_runner}[backend]
        run, thread_info = runner(target, input_shape, precision, threads)
        times = _time_loop(run, warmup, iters)
        stats = LatencyStats.from_times(times, backend=backend, precision=precision, input_shape=input_shape,
                                        device=device_name(backend), versions=library_versions(backend),
                                        threads=thread_info, warmup=warmup, arch_hash=_arch_hash(target))
    if cache is not None and arch is not None:
        cache.store(arch, stats)
    return stats


def _tf_runner(target, input_shape, precision, threads):
    thread_info = set_tf_threads(threads, None)
    import tensorflow as tf

    if isinstance(target, (str, os.PathLike)):
        if precision != "fp32":
            raise LatencyError("an exported SavedModel runs at the precision it was exported with; "
                               "pass precision='fp32' (export a bf16 variant to time bf16)")
        fn = tf.saved_model.load(str(target)).signatures["serving_default"]
        x = tf.constant(np.random.default_rng(0).integers(0, 256, input_shape, dtype=np.uint8))

        def run():
            out = fn(images=x)
            return {k: v.numpy() for k, v in out.items()}
    else:
        model = _as_keras_model(target, precision)
        x = tf.constant(np.random.default_rng(0).normal(0, 1, input_shape).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32)])
        def forward(image):
            return model(image, training=False)

        def run():
            return forward(x).numpy()  # host copy = device synchronisation

    return run, thread_info


def _ort_runner(target, input_shape, precision, threads):
    import onnxruntime as ort

    if precision != "fp32":
        raise LatencyError(f"the onnxruntime backend measures fp32 graphs, got precision={precision!r}")
    tmpdir = None
    if isinstance(target, (str, os.PathLike)) and str(target).endswith(".onnx"):
        onnx_path = str(target)
    else:
        from lps_keras.export import export_onnx

        tmpdir = tempfile.TemporaryDirectory(prefix="lps_latency_onnx_")
        onnx_path = str(Path(tmpdir.name) / "model.onnx")
        source = target if isinstance(target, (str, os.PathLike)) else _as_keras_model(target, "fp32")
        export_onnx(source, onnx_path, input_shape=input_shape, verify=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if "uint8" in inp.type:
        x = np.random.default_rng(0).integers(0, 256, input_shape, dtype=np.uint8)
    else:
        x = np.random.default_rng(0).normal(0, 1, input_shape).astype(np.float32)
    thread_info = {"intra_op": opts.intra_op_num_threads, "inter_op": opts.inter_op_num_threads,
                   "cpu_count": os.cpu_count()}

    def run():
        return sess.run(None, {inp.name: x})

    run._keepalive = tmpdir  # the ONNX file lives as long as the runner
    return run, thread_info


def _tftrt_runner(target, input_shape, precision, threads):
    """TF-TRT: ``target`` must be a SavedModel already converted by :func:`lps_keras.export.convert_tftrt`."""
    from lps_keras.export import _require_tftrt

    try:
        _require_tftrt()
    except RuntimeError as e:
        raise LatencyError(str(e)) from None
    if not isinstance(target, (str, os.PathLike)):
        raise LatencyError("the tftrt backend times a TF-TRT SavedModel directory (export.py --tftrt)")
    return _tf_runner(target, input_shape, "fp32", threads)


def _tensorrt_runner(target, input_shape, precision, threads):
    """TensorRT 10: deserialize (or build from ONNX) an engine and time ``execute_async_v3``.

    Device buffers come from ``cuda-python`` (``cuda.cudart``); the clock is read after
    ``cudaStreamSynchronize``.
    """
    from lps_keras.export import _require_tensorrt, build_tensorrt_engine

    try:
        trt = _require_tensorrt()
        from cuda import cudart
    except (RuntimeError, ImportError) as e:
        raise LatencyError(f"tensorrt backend unavailable: {e} (needs an NVIDIA GPU, tensorrt 10.x and "
                           f"cuda-python; see requirements-tensorrt.txt)") from None
    path = str(target)
    if path.endswith(".onnx"):
        engine_path = path[:-5] + f"_{precision}.engine"
        build_tensorrt_engine(path, engine_path, "fp16" if precision == "fp16" else "fp32")
        path = engine_path
    elif not path.endswith((".engine", ".plan")):
        raise LatencyError("the tensorrt backend times an .onnx or .engine file")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    context = engine.create_execution_context()
    _, stream = cudart.cudaStreamCreate()
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        if -1 in shape:
            shape = input_shape
            context.set_input_shape(name, shape)
        nbytes = int(np.prod(shape)) * np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
        _, ptr = cudart.cudaMalloc(nbytes)
        buffers.append(ptr)
        context.set_tensor_address(name, ptr)

    def run():
        context.execute_async_v3(stream)
        cudart.cudaStreamSynchronize(stream)

    run._keepalive = buffers
    return run, {"intra_op": None, "inter_op": None}


# --------------------------------------------------------------------------- cache
class LatencyCache:
    """Measured latencies in a JSON file keyed by arch, backend, precision, shape, device, versions.

    Writes are atomic (temp file + ``os.replace``). A corrupt or unreadable file gives a warning and
    an empty cache (it is overwritten at the next store), never an exception.

    ``device_key`` overrides the device part of the key: set it to the device a table was
    measured on (e.g. ``"GPU:NVIDIA H100 80GB HBM3"``) to use that table on another machine. With
    a foreign ``device_key`` a miss raises :class:`LatencyCacheMiss` instead of measuring here.
    ``match_device=False`` ignores device and library versions in lookups.
    """

    VERSION = 1

    def __init__(self, path, device_key: Optional[str] = None, match_device: bool = True):
        self.path = Path(path)
        self.device_key = device_key
        self.match_device = match_device
        self.entries: dict[str, dict] = {}
        self._load()

    def _load(self):
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            entries = data["entries"]
            if not isinstance(entries, dict):
                raise ValueError("'entries' is not an object")
            for v in entries.values():
                LatencyStats.from_dict(v["stats"])
        except Exception as e:  # any damage: start fresh, loudly
            warnings.warn(f"latency cache {self.path} is unreadable ({type(e).__name__}: {e}); "
                          f"starting with an empty cache (it will be rewritten)", RuntimeWarning, stacklevel=3)
            self.entries = {}
            return
        self.entries = entries

    def __len__(self):
        return len(self.entries)

    def device(self, backend: str) -> str:
        return self.device_key or device_name(backend)

    @staticmethod
    def make_key(arch_hash, backend, precision, input_shape, device, versions) -> str:
        v = ",".join(f"{k}={versions[k]}" for k in sorted(versions))
        return f"{arch_hash}|{backend}|{precision}|{'x'.join(map(str, input_shape))}|{device}|{v}"

    def lookup(self, arch: Arch, backend: str, precision: str, input_shape, match_device: Optional[bool] = None
               ) -> Optional[LatencyStats]:
        match_device = self.match_device if match_device is None else match_device
        input_shape = tuple(int(v) for v in input_shape)
        if match_device and self.device_key is None and backend != "macs":
            key = self.make_key(arch.hash, backend, precision, input_shape, self.device(backend),
                                library_versions(backend))
            entry = self.entries.get(key)
            return LatencyStats.from_dict(entry["stats"]) if entry else None
        # Table mode: any entry with the same arch/backend/precision/shape (and device if keyed).
        found = []
        for entry in self.entries.values():
            if (entry["arch_hash"] == arch.hash and entry["backend"] == backend and entry["precision"] == precision
                    and tuple(entry["input_shape"]) == input_shape
                    and (not match_device or self.device_key is None or entry["device"] == self.device_key)):
                found.append(entry)
        if not found:
            return None
        devices = {e["device"] for e in found}
        if len(devices) > 1:
            warnings.warn(f"latency cache {self.path}: {arch.hash} measured on several devices {sorted(devices)}; "
                          f"using the newest (set device_key to choose)", RuntimeWarning, stacklevel=2)
        return LatencyStats.from_dict(max(found, key=lambda e: e.get("time", 0))["stats"])

    def store(self, arch: Arch, stats: LatencyStats):
        device = self.device_key or stats.device
        key = self.make_key(arch.hash, stats.backend, stats.precision, stats.input_shape, device, stats.versions)
        self.entries[key] = {
            "arch_hash": arch.hash, "arch": arch.to_dict(), "backend": stats.backend, "precision": stats.precision,
            "input_shape": list(stats.input_shape), "device": device, "versions": stats.versions,
            "time": time.time(), "stats": stats.to_dict(),
        }
        self.save()

    def save(self):
        atomic_write_text(self.path, json.dumps({"version": self.VERSION, "entries": self.entries}, indent=1,
                                                sort_keys=True))

    def import_table(self, other: Union[str, os.PathLike, LatencyCache]) -> int:
        """Merge entries from another cache file (e.g. measured on the target GPU); returns the count."""
        other = other if isinstance(other, LatencyCache) else LatencyCache(other)
        self.entries.update(other.entries)
        self.save()
        return len(other.entries)


def latency_fn(
    backend: str = "tf",
    input_shape=(1, 1024, 2048, 3),
    warmup: int = 5,
    iters: int = 20,
    precision: str = "fp32",
    threads: Optional[int] = None,
    cache: Union[None, str, os.PathLike, LatencyCache] = None,
    device_key: Optional[str] = None,
    match_device: bool = True,
    measure: Optional[Callable] = None,
    verbose: bool = False,
) -> Callable[[Arch], float]:
    """``arch -> latency`` (median ms; GMACs for ``backend="macs"``) through the cache.

    With ``device_key`` naming another machine (a table imported from it) a cache miss raises
    :class:`LatencyCacheMiss`, since measuring here would mix devices. ``measure`` replaces
    :func:`measure_latency` (tests).
    """
    if isinstance(cache, (str, os.PathLike)):
        cache = LatencyCache(cache, device_key=device_key, match_device=match_device)
    elif cache is not None and device_key is not None:
        cache.device_key = device_key
    input_shape = tuple(input_shape)

    def fn(arch: Arch) -> float:
        if backend == "macs":
            return input_shape[0] * arch.macs(input_shape[1], input_shape[2]) / 1e9
        if cache is not None:
            hit = cache.lookup(arch, backend, precision, input_shape)
            if hit is not None:
                return hit.median_ms
            if device_key is not None and device_key != device_name(backend):
                raise LatencyCacheMiss(
                    f"{arch} ({arch.hash}) is not in latency table {cache.path} for device {device_key!r}, "
                    f"{backend}/{precision} {'x'.join(map(str, input_shape))}; measure it on that device")
        m = measure or measure_latency
        stats = m(arch, backend=backend, input_shape=input_shape, warmup=warmup, iters=iters,
                  precision=precision, threads=threads)
        if cache is not None:
            cache.store(arch, stats)
        if verbose:
            print(f"latency {arch}: {stats.median_ms:.2f} ms ({backend}, {stats.device})", flush=True)
        return stats.median_ms

    fn.cache = cache
    return fn


def format_stats(stats: LatencyStats) -> str:
    return (f"{stats.backend}/{stats.precision} {'x'.join(map(str, stats.input_shape))} on {stats.device}: "
            f"median {stats.median_ms:.2f} ms (mean {stats.mean_ms:.2f}, p90 {stats.p90_ms:.2f}, "
            f"min {stats.min_ms:.2f}, max {stats.max_ms:.2f}, n={stats.iterations})")


__all__ = ["BACKENDS", "LatencyCache", "LatencyCacheMiss", "LatencyError", "LatencyStats", "device_name",
           "format_stats", "latency_fn", "library_versions", "measure_latency", "set_tf_threads"]
