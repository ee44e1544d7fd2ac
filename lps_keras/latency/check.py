"""``check_backend``: can this machine time with a latency backend? Asked once, before any work.

``expand.py`` and :func:`~lps_keras.latency.latency_fn` call it when they start, so a search on a
machine without the backend stops with one line (what is missing, which requirements file
installs it) before any candidate is trained, not at the first latency measurement.
"""

from __future__ import annotations

from lps_keras.latency.stats import LatencyError

MAIN_REQUIREMENTS = "requirements.txt"

#: Precisions each backend can time (``macs`` computes, it does not time).
PRECISIONS = {"tf": ("fp32", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "int8"),
              "litert": ("fp32", "fp16", "int8"),
              "tftrt": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16"), "macs": ("fp32", "bf16", "fp16")}

_passed: set[tuple] = set()


def check_precision(backend: str, precision: str) -> None:
    if precision not in PRECISIONS[backend]:
        raise LatencyError(f"the {backend} latency backend times {', '.join(PRECISIONS[backend])}, "
                           f"not precision={precision!r}")


def _need(backend: str, module: str, package: str, requirements: str = MAIN_REQUIREMENTS):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LatencyError(f"latency backend {backend!r} needs the {package} package, which is not installed "
                           f"({e}); pip install -r {requirements}") from None


def openvino_bf16_status() -> tuple[bool, str]:
    """(supported, capabilities): OpenVINO's CPU plugin lists ``BF16`` where the CPU has AVX512-BF16 or AMX."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps, ", ".join(caps)


def check_backend(backend: str, precision: str = "fp32", converter: bool = True, runtime: bool = True) -> None:
    """Raise :class:`LatencyError` (one line) unless ``backend`` can time ``precision`` here.

    ``converter=False`` / ``runtime=False`` skip what a caller supplies itself (an injected
    conversion or loading step, as the tests of the GPU backends do). A passed check is
    remembered for the process.
    """
    from lps_keras.latency.runners import BACKENDS

    if backend not in BACKENDS:
        raise LatencyError(f"unknown latency backend {backend!r}; known: {', '.join(BACKENDS)}")
    check_precision(backend, precision)
    key = (backend, precision, converter, runtime)
    if key in _passed:
        return
    if backend in ("onnxruntime", "openvino", "tensorrt"):  # all start from our tf2onnx export
        _need(backend, "tf2onnx", "tf2onnx")
        _need(backend, "onnx", "onnx")
    if backend == "onnxruntime":
        _need(backend, "onnxruntime", "onnxruntime")
    elif backend == "openvino":
        _need(backend, "openvino", "openvino")
        if precision == "int8":
            _need(backend, "nncf", "nncf")
        if precision == "bf16":
            ok, caps = openvino_bf16_status()
            if not ok:
                raise LatencyError(f"openvino bf16 needs a CPU with bf16 support (AVX512-BF16 or AMX); this CPU's "
                                   f"OpenVINO capabilities are {caps}; time fp32 instead")
    elif backend == "litert":
        _need(backend, "ai_edge_litert.interpreter", "ai-edge-litert")
    elif backend == "tftrt" and converter:
        _check_tftrt()
    elif backend == "tensorrt" and (converter or runtime):
        _check_tensorrt()
    _passed.add(key)


def _check_tftrt():
    import tensorflow as tf

    from lps_keras.export.tensorrt import TFTRT_REQUIREMENTS, tftrt_status

    ok, reason = tftrt_status()
    if not ok:
        raise LatencyError(f"latency backend 'tftrt' needs TensorFlow <= 2.17 built with TensorRT and an NVIDIA GPU "
                           f"(TF-TRT was removed in TensorFlow 2.18); here TensorFlow {tf.__version__}: {reason}. "
                           f"Install the TF-TRT line from {TFTRT_REQUIREMENTS} on a GPU machine")


def _check_tensorrt():
    from lps_keras.export.tensorrt import TENSORRT_REQUIREMENTS, require_tensorrt

    try:
        require_tensorrt()
    except RuntimeError as e:
        raise LatencyError(f"latency backend 'tensorrt': {e}") from None
    try:
        from cuda import cudart
    except ImportError as e:
        raise LatencyError(f"latency backend 'tensorrt' needs cuda-python ({e}); "
                           f"pip install -r {TENSORRT_REQUIREMENTS}") from None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise LatencyError(f"latency backend 'tensorrt' needs an NVIDIA GPU; none is visible (cudaGetDeviceCount: "
                           f"{err}, {count} devices)")
