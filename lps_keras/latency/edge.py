"""Latency of export.py's edge artefacts: LiteRT ``.tflite`` (``litert``) and OpenVINO IR ``.xml`` (``openvino_ir``).

The artefacts run through the same loaders as the ``litert`` and ``openvino`` latency backends
(:func:`~lps_keras.latency.runners.load_litert`, :func:`~lps_keras.latency.runners.load_openvino`) and
the same timing loop (untimed warm-up, median of timed iterations, each ending with the output in
host memory). They have a static input size (the one they were exported at); another ``input_shape``
is an error, not a silent resize. ``openvino_ir`` runs the IR at its stored precision unless asked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from lps_keras.latency.backends import get_backend
from lps_keras.latency.stats import LatencyError, LatencyStats, device_name, library_versions, time_loop

EDGE_BACKENDS = ("litert", "openvino_ir")
_SUFFIXES = {".tflite": "litert", ".xml": "openvino_ir"}


def artefact_precision(path) -> Optional[str]:
    """``fp32`` / ``fp16`` / ``bf16`` / ``int8`` from an export.py artefact name (``1_litert_int8.tflite``)."""
    m = re.search(r"_(fp32|fp16|bf16|int8)$", Path(path).stem)
    return m.group(1) if m else None


def edge_runner(path, input_shape=None, precision: Optional[str] = None, threads: Optional[int] = None):
    """``(backend, run, thread_info)`` for a ``.tflite`` or ``.xml`` artefact (see the module docstring)."""
    from lps_keras.latency.runners import check_static_shape, load_litert, load_openvino

    path = Path(path)
    backend = _SUFFIXES.get(path.suffix)
    if backend is None or not path.is_file():
        raise LatencyError(f"{path}: not a .tflite or .xml artefact file; edge backends: {', '.join(EDGE_BACKENDS)}")
    if backend == "litert":
        run, info = load_litert(path, input_shape, precision, threads)
        run.input_shape = run._keepalive.input_shape
        return backend, run, info
    allowed = get_backend("openvino").precisions
    if precision is not None and precision not in allowed:
        raise LatencyError(f"OpenVINO IR precision must be one of {', '.join(allowed)}, got {precision!r}")
    stored = None if precision in (None, "int8") else precision  # int8 layers run in int8 whatever the hint
    run, info = load_openvino(path, input_shape, stored, threads)
    run.input_shape = run._keepalive.input_shape
    check_static_shape(path, run.input_shape, input_shape)
    return backend, run, info


def measure_edge_latency(path, backend: Optional[str] = None, input_shape=None, warmup: int = 5, iters: int = 20,
                         precision: Optional[str] = None, threads: Optional[int] = None) -> LatencyStats:
    """Time one forward pass of a LiteRT or OpenVINO artefact; ``backend`` defaults from the suffix."""
    expected = _SUFFIXES.get(Path(path).suffix)
    if backend is not None and backend != expected:
        raise LatencyError(f"{path}: the {backend!r} edge backend does not run this file; edge backends: "
                           f"{', '.join(EDGE_BACKENDS)}")
    if iters < 1 or warmup < 0:
        raise LatencyError(f"need iters >= 1 and warmup >= 0, got iters={iters!r}, warmup={warmup!r}")
    backend, run, thread_info = edge_runner(path, input_shape, precision, threads)
    times = time_loop(run, warmup, iters)
    table_name = {"litert": "litert", "openvino_ir": "openvino"}[backend]
    return LatencyStats.from_times(times, backend=backend, precision=precision or artefact_precision(path) or "stored",
                                   input_shape=run.input_shape, device=device_name(table_name),
                                   versions=library_versions(table_name), threads=thread_info, warmup=warmup,
                                   arch_hash=None)
