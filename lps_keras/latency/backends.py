"""The latency backends: one table, one entry per backend (as timm's and mmseg's registries are).

An entry says everything the rest of the project asks of a backend: its name and the precisions
it times, what must be installed (and which requirements file installs it), extra checks (a GPU,
bf16 support), the device and library-version strings a measurement is keyed by, the artefact kind
it times, and the runner that loads a network or artefact into a timed call. The recipe's and the
CLIs' choices come from :func:`backend_names`, read when a recipe is checked or a parser is built, so
a backend registered after import is a valid choice too. Adding a backend is adding one entry::

    register_backend(Backend(
        name="mybackend", precisions=("fp32",), summary="My runtime on the CPU",
        requires=(("myruntime", "myruntime"),), versions=lambda: package_versions("myruntime"),
        device=cpu_device, artifact="onnx", runner=my_runner))   # my_runner(job) -> (run, thread_info)

Nothing here imports TensorFlow or a runtime at import time: the recipe module reads the names.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Optional

from lps_keras.latency.artifacts import ARTIFACT_NAMES
from lps_keras.latency.stats import LatencyError, cpu_device, package_versions

MAIN_REQUIREMENTS = "requirements.txt"
TFTRT_REQUIREMENTS = "requirements-tftrt.txt"
TENSORRT_REQUIREMENTS = "requirements-tensorrt.txt"


@dataclasses.dataclass(frozen=True)
class Backend:
    """One latency backend (see the module docstring).

    ``settings()`` are the runtime settings from the environment a timing depends on (see the field).
    ``check(precision, converter, runtime)`` raises :class:`LatencyError` where more than imports is
    needed (a GPU, CPU bf16 support); ``converter`` / ``runtime`` are False where the caller injects
    that step itself. ``runner(job)`` returns ``(run, thread_info)``: ``run()`` executes one timed
    forward pass ending with the output in host memory (``job`` is a
    :class:`~lps_keras.latency.runners.Job`). ``timed=False`` marks an analytic backend (``macs``).
    """

    name: str
    precisions: tuple[str, ...]
    summary: str
    device: Callable[[], str]
    versions: Callable[[], dict]
    runner: Optional[Callable] = None
    # Runtime settings a timing depends on, read from the environment without importing anything (e.g.
    # onnxruntime's thread spinning): recorded and keyed with the versions (library_versions), and compared
    # with the settings a latency profile records when one is loaded (a difference is warned of, not refused).
    settings: Callable[[], dict] = dict
    requires: tuple[tuple[str, str], ...] = ()  # (module to import, pip package)
    requires_for: Mapping[str, tuple[tuple[str, str], ...]] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))  # precision -> more (module, package)
    requirements: str = MAIN_REQUIREMENTS
    check: Optional[Callable[[str, bool, bool], None]] = None
    artifact: Optional[str] = None  # the ArtifactStore kind it times (None: the Keras model / nothing)
    timed: bool = True


class UnknownBackendError(LatencyError, ValueError):
    """A backend name that is not in the table (a bad value, hence also a ``ValueError``)."""


_TABLE: dict[str, Backend] = {}
_passed: set[tuple] = set()


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a table entry; returns it."""
    missing = [f for f in ("name", "precisions", "summary", "device", "versions") if not getattr(backend, f)]
    if missing or (backend.timed and backend.runner is None):
        raise ValueError(f"backend {backend.name!r} is incomplete: missing {missing or ['runner']}")
    if backend.artifact is not None and backend.artifact not in ARTIFACT_NAMES:
        raise ValueError(f"backend {backend.name!r} times artefact kind {backend.artifact!r}, which is not in the "
                         f"kind table ({', '.join(ARTIFACT_NAMES)}); register_artifact_kind it first")
    _TABLE[backend.name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    return tuple(_TABLE)


def get_backend(name: str) -> Backend:
    """The table entry for ``name``; an unknown name is a :class:`LatencyError` listing the known ones."""
    try:
        return _TABLE[name]
    except KeyError:
        raise UnknownBackendError(f"unknown latency backend {name!r}; known: {', '.join(_TABLE)}") from None


def check_precision(backend: str, precision: str) -> None:
    entry = get_backend(backend)
    if precision not in entry.precisions:
        raise LatencyError(f"the {backend} latency backend times {', '.join(entry.precisions)}, "
                           f"not precision={precision!r}")


def _need(backend: Backend, module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LatencyError(f"latency backend {backend.name!r} needs the {package} package, which is not installed "
                           f"({e}); pip install -r {backend.requirements}") from None


def check_backend(backend: str, precision: str = "fp32", converter: bool = True, runtime: bool = True) -> None:
    """Raise :class:`LatencyError` (one line) unless ``backend`` can time ``precision`` here.

    Asked once, before any work (``expand.py``, :func:`~lps_keras.latency.latency_fn`), so a search on a
    machine without the backend stops with one line naming what is missing and the requirements file
    that installs it. ``converter=False`` / ``runtime=False`` skip what a caller supplies itself (an
    injected conversion or loading step, as the tests of the GPU backends do). A passed check is
    remembered for the process.
    """
    entry = get_backend(backend)
    check_precision(backend, precision)
    key = (backend, precision, converter, runtime)
    if key in _passed:
        return
    for module, package in (*entry.requires, *entry.requires_for.get(precision, ())):
        _need(entry, module, package)
    if entry.check is not None:
        entry.check(precision, converter, runtime)
    _passed.add(key)


# --------------------------------------------------------------------------- device and version strings
def tf_device() -> str:
    """The GPU TensorFlow would use, else the CPU."""
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU:{details.get('device_name', gpus[0].name)}"
    except Exception:  # noqa: BLE001 - the device query is best effort
        pass
    return cpu_device()


def cuda_device() -> str:
    try:
        from cuda import cudart

        _, props = cudart.cudaGetDeviceProperties(0)
        return f"GPU:{props.name.decode()}"
    except Exception:  # noqa: BLE001 - best effort
        return "GPU:unknown"


def _tf_version() -> dict:
    import tensorflow as tf

    return {"tensorflow": tf.__version__}


def _onednn_setting() -> str:
    """``TF_ENABLE_ONEDNN_OPTS`` as TensorFlow reads it (at import): on, off, or TensorFlow's CPU-based default."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if value is None or not value.strip():
        return "default"
    return "on" if value.strip().lower() in ("1", "true", "yes", "on") else "off"


def _tf_cpu_settings() -> dict:
    # oneDNN on or off changes TensorFlow's CPU kernels (1.1-2x here, docs/speed_tf_vs_onnxruntime.md), and the
    # tf / tf_session backends time the network with its weights as graph constants since issue 24: both are
    # part of what a cached figure was measured with (LiteRT and TF-TRT have none: oneDNN is not theirs).
    return {"onednn": _onednn_setting(), "weights": "constants"}


def _module_version(module: str, key: str) -> Callable[[], dict]:
    def versions() -> dict:
        try:
            return {key: importlib.import_module(module).__version__}
        except ImportError:
            return {}
    return versions


def onnxruntime_spinning() -> str:
    """``LPS_ORT_SPINNING`` (on / off; default off): whether onnxruntime's intra-op threads spin after a run
    waiting for the next (ONNX Runtime's own default is on).

    Off for measurement: a paired round runs several loaded sessions one after another, and the spinning
    threads of one take the cores from the next. Measured on a 2-core Xeon (docs/ort_spinning.md): with
    spinning the parent timed 0.90-1.15 ms and each ΔL had a median standard error of 8%; without, 0.64-0.73 ms
    and 4%. Part of what a figure was measured with (recorded and keyed)."""
    value = os.environ.get("LPS_ORT_SPINNING", "off").strip().lower()
    if value not in ("on", "off"):
        raise LatencyError(f"LPS_ORT_SPINNING: {value!r} is not 'on' or 'off'")
    return value


def _onnxruntime_settings() -> dict:
    return {"spinning": onnxruntime_spinning()}


def _onnx_route_version(module: str, key: str) -> Callable[[], dict]:
    """The runtime's version plus what wrote the ONNX graph it runs (TensorFlow, Keras, tf2onnx): a figure
    cached by one exporter is not served for the graph another one writes, and an IR or engine cached from
    an older ONNX file is rebuilt with it."""
    runtime = _module_version(module, key)

    def versions() -> dict:
        # From package metadata, not imports: an edge board timing a handed-in IR may have no TensorFlow.
        writers = {**package_versions("tensorflow"), **package_versions("keras"), **package_versions("tf2onnx")}
        return {**runtime(), **writers}
    return versions


# --------------------------------------------------------------------------- extra checks
def openvino_bf16_status() -> tuple[bool, str]:
    """(supported, capabilities): OpenVINO's CPU plugin lists ``BF16`` where the CPU has AVX512-BF16 or AMX."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps, ", ".join(caps)


def _check_openvino(precision: str, converter: bool, runtime: bool) -> None:
    if precision == "bf16":
        ok, caps = openvino_bf16_status()
        if not ok:
            raise LatencyError(f"openvino bf16 needs a CPU with bf16 support (AVX512-BF16 or AMX); this CPU's "
                               f"OpenVINO capabilities are {caps}; time fp32 instead")


def _check_tftrt(precision: str, converter: bool, runtime: bool) -> None:
    if not converter:
        return
    import tensorflow as tf

    from lps_keras.export.tensorrt import tftrt_status

    ok, reason = tftrt_status()
    if not ok:
        raise LatencyError(f"latency backend 'tftrt' needs TensorFlow <= 2.17 built with TensorRT and an NVIDIA GPU "
                           f"(TF-TRT was removed in TensorFlow 2.18); here TensorFlow {tf.__version__}: {reason}. "
                           f"Install the TF-TRT line from {TFTRT_REQUIREMENTS} on a GPU machine")


def _check_tensorrt(precision: str, converter: bool, runtime: bool) -> None:
    if not (converter or runtime):
        return
    from lps_keras.export.tensorrt import require_tensorrt

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


# --------------------------------------------------------------------------- the table
def _runner(name: str) -> Callable:
    """The runner ``name`` of :mod:`lps_keras.latency.runners`, imported at first use (it imports numpy only)."""
    def run(job):
        from lps_keras.latency import runners

        return getattr(runners, name)(job)
    run.__name__ = name
    return run


_ONNX = (("tf2onnx", "tf2onnx"), ("onnx", "onnx"))  # onnxruntime, OpenVINO and TensorRT start from our ONNX export

for _entry in (
    Backend("tf", ("fp32", "bf16"), "TensorFlow on its default device (the Keras deploy model in a tf.function, "
            "weights as graph constants as in the exported SavedModel)",
            device=tf_device, versions=_tf_version, settings=_tf_cpu_settings, runner=_runner("tf_runner")),
    Backend("tf_session", ("fp32",), "TensorFlow's session executor on the static SavedModel (how TF Serving "
            "runs it; TF_ENABLE_ONEDNN_OPTS applies as there)",
            device=tf_device, versions=_tf_version, settings=_tf_cpu_settings, artifact="savedmodel",
            runner=_runner("tf_session_runner")),
    Backend("onnxruntime", ("fp32",), "ONNX Runtime, CPU execution provider, on our tf2onnx export",
            device=cpu_device, versions=_onnx_route_version("onnxruntime", "onnxruntime"),
            settings=_onnxruntime_settings,
            requires=(*_ONNX, ("onnxruntime", "onnxruntime")), artifact="onnx", runner=_runner("onnxruntime_runner")),
    Backend("openvino", ("fp32", "bf16", "int8"), "OpenVINO CPU plugin on an IR converted from the ONNX export "
            "(int8: NNCF post-training quantisation)",
            device=cpu_device, versions=_onnx_route_version("openvino", "openvino"),
            requires=(*_ONNX, ("openvino", "openvino")), requires_for=MappingProxyType({"int8": (("nncf", "nncf"),)}),
            check=_check_openvino, artifact="openvino", runner=_runner("openvino_runner")),
    Backend("litert", ("fp32", "fp16", "int8"), "LiteRT (ai-edge-litert Interpreter, XNNPACK) on a converted .tflite",
            device=cpu_device, versions=lambda: {**package_versions("ai-edge-litert", key="ai_edge_litert"),
                                                 **_tf_version()},  # TF is the converter
            requires=(("ai_edge_litert.interpreter", "ai-edge-litert"),), artifact="litert",
            runner=_runner("litert_runner")),
    Backend("tftrt", ("fp32", "fp16"), "TF-TRT (TensorFlow <= 2.17 with TensorRT, NVIDIA GPU)",
            device=tf_device, versions=_tf_version, requirements=TFTRT_REQUIREMENTS, check=_check_tftrt,
            artifact="tftrt", runner=_runner("tftrt_runner")),
    Backend("tensorrt", ("fp32", "fp16"), "TensorRT 10 engine built from the ONNX export (NVIDIA GPU)",
            device=cuda_device, versions=_onnx_route_version("tensorrt", "tensorrt"), requires=_ONNX,
            requirements=TENSORRT_REQUIREMENTS, check=_check_tensorrt, artifact="tensorrt",
            runner=_runner("tensorrt_runner")),
    Backend("macs", ("fp32", "bf16", "fp16"), "no timing: the network's GMACs, any family (dry runs and tests)",
            device=cpu_device, versions=lambda: {"macs": "1"}, timed=False),
):
    register_backend(_entry)

#: The built-in backend names, in table order (a snapshot at import: :func:`backend_names` for the table now).
BACKEND_NAMES = backend_names()


def device_name(backend: str = "tf") -> str:
    """The device a backend times on: the GPU's model name for GPU backends (and TF with a GPU), else the CPU's."""
    return get_backend(backend).device()


def library_versions(backend: str) -> dict:
    """The library versions and runtime settings a measurement with ``backend`` depends on (part of the cache
    key; the settings last, under their own names)."""
    entry = get_backend(backend)
    return {**entry.versions(), **entry.settings()}


def runtime_settings(backend: str) -> dict:
    """The runtime settings ``backend`` would time with here (from the environment; nothing imported)."""
    return get_backend(backend).settings()


def describe_backends() -> str:
    """One line per backend: name, precisions, what it is (for ``--help`` and the README)."""
    return "\n".join(f"{b.name:12s} {'/'.join(b.precisions):16s} {b.summary}" for b in _TABLE.values())

