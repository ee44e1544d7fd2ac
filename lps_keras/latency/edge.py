"""Latency of export.py's edge artefacts (LiteRT ``.tflite``, OpenVINO IR ``.xml``) through the backend table.

A thin layer over :func:`~lps_keras.latency.measure.measure_latency`: the backend comes from the file's
suffix (``litert``, ``openvino``: the table's entries and runners, no second convention), the input size
from the artefact (it has a static one, the size it was exported at; another is refused by the runner,
not resized), and the precision from the artefact's name (``1_litert_int8.tflite``) or, for an IR without
one, from its stored inference hint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from lps_keras.latency.stats import LatencyError, LatencyStats

_SUFFIXES = {".tflite": "litert", ".xml": "openvino"}


def artefact_precision(path) -> Optional[str]:
    """``fp32`` / ``fp16`` / ``bf16`` / ``int8`` from an export.py artefact name (``1_litert_int8.tflite``)."""
    m = re.search(r"_(fp32|fp16|bf16|int8)$", Path(path).stem)
    return m.group(1) if m else None


def artefact_backend(path) -> str:
    """The latency backend that runs ``path``: ``litert`` for ``.tflite``, ``openvino`` for ``.xml``."""
    path = Path(path)
    backend = _SUFFIXES.get(path.suffix)
    if backend is None or not path.is_file():
        raise LatencyError(f"{path}: not a .tflite or .xml artefact file (export.py --litert / --openvino)")
    return backend


def run_precision(path, threads: Optional[int] = None) -> str:
    """The precision ``path`` runs at: its name's (``1_openvino_int8.xml``), else an IR's stored inference
    hint (``fp32`` / ``bf16``), else ``fp32`` (a ``.tflite`` runs at its stored precision whatever the name)."""
    named = artefact_precision(path)
    if named is not None or artefact_backend(path) == "litert":
        return named or "fp32"
    from lps_keras.export.edge import openvino_predictor

    hint = openvino_predictor(path, threads).hint  # compiled with the IR's stored hint
    return "bf16" if "bf16" in hint else "fp32"


def stored_input_shape(path, threads: Optional[int] = None) -> tuple:
    """The static input shape ``path`` was exported at (N, H, W, C)."""
    from lps_keras.export.edge import litert_predictor, openvino_predictor

    backend = artefact_backend(path)
    predict = litert_predictor(path, threads) if backend == "litert" else openvino_predictor(path, threads)
    if predict.input_shape is None:
        raise LatencyError(f"{path}: the artefact has a dynamic input size; give input_shape")
    return tuple(predict.input_shape)


def measure_edge_latency(path, backend: Optional[str] = None, input_shape=None, warmup: int = 5, iters: int = 20,
                         precision: Optional[str] = None, threads: Optional[int] = None) -> LatencyStats:
    """Time one forward pass of a LiteRT or OpenVINO artefact; ``backend`` defaults from the suffix."""
    from lps_keras.latency.measure import measure_latency

    expected = artefact_backend(path)
    if backend is not None and backend != expected:
        raise LatencyError(f"{path}: the {backend!r} backend does not run this file; it is {expected!r}'s")
    shape = tuple(input_shape) if input_shape is not None else stored_input_shape(path, threads)
    return measure_latency(path, expected, shape, warmup=warmup, iters=iters,
                           precision=precision or run_precision(path, threads), threads=threads)
