"""Latency: honest measurement (:mod:`.runners`), records (:mod:`.stats`) and the one cache (:mod:`.cache`)."""

from lps_keras.latency.cache import LatencyCache, latency_fn
from lps_keras.latency.runners import BACKENDS, measure_latency
from lps_keras.latency.stats import (
    LatencyCacheMiss,
    LatencyError,
    LatencyStats,
    device_name,
    format_stats,
    library_versions,
    set_tf_threads,
)

__all__ = ["BACKENDS", "LatencyCache", "LatencyCacheMiss", "LatencyError", "LatencyStats", "device_name",
           "format_stats", "latency_fn", "library_versions", "measure_latency", "set_tf_threads"]
