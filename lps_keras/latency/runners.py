"""``measure_latency``: one timed forward pass per backend (tf, onnxruntime, tftrt, tensorrt, macs).

Honest timing rules: warm-up runs (which include tracing, graph optimisation, engine building)
are never timed; every timed iteration ends with the result copied to the host (``.numpy()``),
which synchronises a GPU; the median is the reported figure.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from lps_keras.arch import Arch
from lps_keras.latency.stats import LatencyError, LatencyStats, device_name, library_versions, set_tf_threads

if TYPE_CHECKING:
    from lps_keras.latency.cache import LatencyCache

BACKENDS = ("tf", "onnxruntime", "tftrt", "tensorrt", "macs")


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
        from lps_keras.export.precision import bf16_model

        model = bf16_model(model)
    elif precision != "fp32":
        raise LatencyError(f"precision {precision!r} is not supported by this backend (fp32, bf16)")
    return model


def _arch_hash(target) -> Optional[str]:
    if isinstance(target, Arch):
        return target.hash
    if isinstance(target, (str, os.PathLike)):
        return None
    arch = getattr(target, "arch", None)  # models from build_model carry their Arch
    return arch.hash if isinstance(arch, Arch) else None


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
        return cache.get_or_measure(arch, backend, precision, input_shape, lambda: measure_latency(
            target, backend, input_shape, warmup=warmup, iters=iters, precision=precision, threads=threads))

    if backend == "macs":
        arch = arch or getattr(target, "arch", None)
        if not isinstance(arch, Arch):
            raise LatencyError("the macs backend needs an Arch or an LPS-Net Keras model")
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
        from lps_keras.export.onnx import export_onnx

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
    from lps_keras.export.tensorrt import require_tftrt

    try:
        require_tftrt()
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
    from lps_keras.export.tensorrt import build_tensorrt_engine, require_tensorrt

    try:
        trt = require_tensorrt()
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
