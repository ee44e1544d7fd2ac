"""Latency of the edge artefacts: LiteRT ``.tflite`` (``litert``) and OpenVINO IR ``.xml`` (``openvino_ir``).

The runners follow :mod:`lps_keras.latency.runners`' protocol, ``runner(target, input_shape,
precision, threads) -> (run, thread_info)``, so ``measure_latency`` can register them; until then
:func:`measure_edge_latency` times an artefact with the same rules (untimed warm-up, median of
timed iterations, each ending with the output in host memory). The artefacts have a static input
size (the one they were exported at); another ``input_shape`` is an error, not a silent resize.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras.latency.stats import LatencyError, LatencyStats, device_name, time_loop

EDGE_BACKENDS = ("litert", "openvino_ir")


def _check_shape(path, predict, input_shape):
    if input_shape is not None and tuple(input_shape) != predict.input_shape:
        raise LatencyError(f"{path} was exported for input {list(predict.input_shape)}, asked to time "
                           f"{list(input_shape)}; export it at that size (export.py --input-size)")


def _run(predict):
    x = np.random.default_rng(0).normal(0, 1, predict.input_shape).astype(np.float32)

    def run():
        return predict(x)  # the predictors copy the output to a numpy array

    run.input_shape = predict.input_shape
    run._keepalive = predict
    return run


def litert_runner(target, input_shape=None, precision=None, threads: Optional[int] = None):
    """Time a ``.tflite`` file with ai-edge-litert's Interpreter (XNNPACK); it runs at its stored precision."""
    from lps_keras.export.edge import litert_predictor

    path = Path(target)
    if path.suffix != ".tflite" or not path.is_file():
        raise LatencyError(f"the litert backend times a .tflite file (export.py --litert), got {str(target)!r}")
    predict = litert_predictor(path, threads)
    _check_shape(path, predict, input_shape)
    return _run(predict), {"intra_op": threads, "inter_op": None, "cpu_count": os.cpu_count()}


def openvino_ir_runner(target, input_shape=None, precision=None, threads: Optional[int] = None):
    """Time an OpenVINO IR on the CPU plugin at its stored inference precision (``precision`` overrides:
    fp32 or bf16)."""
    from lps_keras.export.edge import openvino_predictor

    path = Path(target)
    if path.suffix != ".xml" or not path.is_file():
        raise LatencyError(f"the openvino_ir backend times an OpenVINO .xml file (export.py --openvino), "
                           f"got {str(target)!r}")
    if precision not in (None, "fp32", "bf16", "int8"):
        raise LatencyError(f"OpenVINO IR precision must be fp32, bf16 or int8, got {precision!r}")
    predict = openvino_predictor(path, threads, None if precision in (None, "int8") else precision)
    _check_shape(path, predict, input_shape)
    return _run(predict), {"intra_op": threads, "inter_op": None, "cpu_count": os.cpu_count(),
                                  "inference_precision_hint": predict.hint}


def artefact_precision(path) -> Optional[str]:
    """``fp32`` / ``fp16`` / ``bf16`` / ``int8`` from an export.py artefact name (``1_litert_int8.tflite``)."""
    m = re.search(r"_(fp32|fp16|bf16|int8)$", Path(path).stem)
    return m.group(1) if m else None


def _versions(backend) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    package = {"litert": "ai-edge-litert", "openvino_ir": "openvino"}[backend]
    try:
        return {package: version(package)}
    except PackageNotFoundError:
        return {}


def measure_edge_latency(path, backend: Optional[str] = None, input_shape=None, warmup: int = 5, iters: int = 20,
                         precision: Optional[str] = None, threads: Optional[int] = None) -> LatencyStats:
    """Time one forward pass of a LiteRT or OpenVINO artefact; ``backend`` defaults from the suffix."""
    backend = backend or {".tflite": "litert", ".xml": "openvino_ir"}.get(Path(path).suffix)
    if backend not in EDGE_BACKENDS:
        raise LatencyError(f"{path}: not a .tflite or .xml artefact; edge backends: {', '.join(EDGE_BACKENDS)}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters!r}, warmup={warmup!r}")
    runner = litert_runner if backend == "litert" else openvino_ir_runner
    run, thread_info = runner(path, input_shape, precision, threads)
    times = time_loop(run, warmup, iters)
    return LatencyStats.from_times(times, backend=backend, precision=precision or artefact_precision(path) or "stored",
                                   input_shape=run.input_shape, device=device_name(backend),
                                   versions=_versions(backend), threads=thread_info, warmup=warmup, arch_hash=None)
