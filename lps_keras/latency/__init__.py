"""Latency: honest measurement (:mod:`.runners`), records (:mod:`.stats`), the one cache (:mod:`.cache`),
converted artefacts (:mod:`.artifacts`) and the start-up backend check (:mod:`.check`)."""

from lps_keras.latency.artifacts import ArtifactStore
from lps_keras.latency.cache import LatencyCache, latency_fn
from lps_keras.latency.check import check_backend
from lps_keras.latency.runners import (
    BACKENDS,
    load_onnxruntime,
    load_openvino,
    load_savedmodel,
    load_tensorrt_engine,
    measure_latency,
)
from lps_keras.latency.stats import (
    LatencyCacheMiss,
    LatencyError,
    LatencyStats,
    device_name,
    format_stats,
    library_versions,
    set_tf_threads,
)

__all__ = ["ArtifactStore", "BACKENDS", "LatencyCache", "LatencyCacheMiss", "LatencyError", "LatencyStats",
           "check_backend", "device_name", "format_stats", "latency_fn", "library_versions", "load_onnxruntime",
           "load_openvino", "load_savedmodel", "load_tensorrt_engine", "measure_latency", "set_tf_threads"]
