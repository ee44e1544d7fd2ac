"""Latency: the backend table (:mod:`.backends`), runners (:mod:`.runners`), timing (:mod:`.measure`:
``measure_latency``, ``measure_set``, ``latency_fn``), records (:mod:`.stats`), the one cache
(:mod:`.cache`), converted artefacts (:mod:`.artifacts`) and per-device latency models (:mod:`.profile`:
``predict_latency``, ``load_profile``)."""

from lps_keras.latency.artifacts import ArtifactKind, ArtifactStore, register_artifact_kind
from lps_keras.latency.backends import (
    BACKEND_NAMES,
    Backend,
    check_backend,
    describe_backends,
    device_name,
    get_backend,
    library_versions,
    register_backend,
)
from lps_keras.latency.cache import LatencyCache
from lps_keras.latency.measure import SetMeasurement, latency_fn, measure_latency, measure_set
from lps_keras.latency.runners import load_onnxruntime, load_openvino, load_savedmodel, load_tensorrt_engine
from lps_keras.latency.stats import (
    LatencyCacheMiss,
    LatencyError,
    LatencyStats,
    cpu_flags,
    cpu_flags_text,
    format_stats,
    set_tf_threads,
)

#: Kept for callers of the old name: the backend names, in table order.
BACKENDS = BACKEND_NAMES


def __getattr__(name):
    # The profile's names load on first use: `python -m lps_keras.latency.profile` must find that module not
    # yet imported by its package (runpy warns otherwise).
    if name in ("ProfileError", "load_profile", "predict_latency"):
        from lps_keras.latency import profile

        return getattr(profile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ArtifactKind", "ArtifactStore", "BACKENDS", "BACKEND_NAMES", "Backend", "LatencyCache", "LatencyCacheMiss",
           "LatencyError", "LatencyStats", "SetMeasurement", "check_backend", "cpu_flags", "cpu_flags_text",
           "describe_backends", "device_name", "format_stats", "get_backend", "latency_fn", "library_versions",
           "load_onnxruntime", "load_openvino", "load_profile", "load_savedmodel", "load_tensorrt_engine",
           "measure_latency", "measure_set", "predict_latency", "ProfileError", "register_artifact_kind",
           "register_backend", "set_tf_threads"]
