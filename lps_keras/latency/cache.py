"""The one latency cache (:class:`LatencyCache`, a JSON file): it only caches.

Every cached measurement goes through :meth:`LatencyCache.get_or_measure`, whether it comes from
:func:`~lps_keras.latency.measure_latency` (``cache=``) or from :func:`~lps_keras.latency.latency_fn`;
what to do on a miss is the caller's function argument, so this module imports no runner.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Union

from lps_keras.arch import Arch
from lps_keras.fileio import atomic_write_text
from lps_keras.latency.backends import device_name, library_versions
from lps_keras.latency.stats import LatencyStats


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
    def make_key(arch_hash, backend, precision, input_shape, device, versions, threads: Optional[int] = None) -> str:
        v = ",".join(f"{k}={versions[k]}" for k in sorted(versions))
        # Requested threads join the key only when set, so entries of the default setting keep their keys.
        t = "" if threads is None else f"|threads={int(threads)}"
        return f"{arch_hash}|{backend}|{precision}|{'x'.join(map(str, input_shape))}|{device}|{v}{t}"

    def lookup(self, arch: Arch, backend: str, precision: str, input_shape, match_device: Optional[bool] = None,
               threads: Optional[int] = None) -> Optional[LatencyStats]:
        match_device = self.match_device if match_device is None else match_device
        input_shape = tuple(int(v) for v in input_shape)
        if match_device and self.device_key is None and backend != "macs":
            key = self.make_key(arch.hash, backend, precision, input_shape, self.device(backend),
                                library_versions(backend), threads)
            entry = self.entries.get(key)
            return LatencyStats.from_dict(entry["stats"]) if entry else None
        # Table mode: any entry with the same arch/backend/precision/shape (and device if keyed).
        found = []
        for entry in self.entries.values():
            if (entry["arch_hash"] == arch.hash and entry["backend"] == backend and entry["precision"] == precision
                    and tuple(entry["input_shape"]) == input_shape and entry.get("requested_threads") == threads
                    and (not match_device or self.device_key is None or entry["device"] == self.device_key)):
                found.append(entry)
        if not found:
            return None
        devices = {e["device"] for e in found}
        if len(devices) > 1:
            warnings.warn(f"latency cache {self.path}: {arch.hash} measured on several devices {sorted(devices)}; "
                          f"using the newest (set device_key to choose)", RuntimeWarning, stacklevel=2)
        return LatencyStats.from_dict(max(found, key=lambda e: e.get("time", 0))["stats"])

    def get_or_measure(self, arch: Arch, backend: str, precision: str, input_shape,
                       measure: Callable[[], LatencyStats], threads: Optional[int] = None) -> LatencyStats:
        """The cached stats for this key (``threads``: the requested thread count), else ``measure()``, stored
        before it is returned."""
        hit = self.lookup(arch, backend, precision, input_shape, threads=threads)
        if hit is not None:
            return hit
        stats = measure()
        self.store(arch, stats, threads)
        return stats

    def store(self, arch: Arch, stats: LatencyStats, threads: Optional[int] = None):
        device = self.device_key or stats.device
        key = self.make_key(arch.hash, stats.backend, stats.precision, stats.input_shape, device, stats.versions,
                            threads)
        self.entries[key] = {
            "arch_hash": arch.hash, "arch": arch.to_dict(), "backend": stats.backend, "precision": stats.precision,
            "input_shape": list(stats.input_shape), "device": device, "versions": stats.versions,
            "time": time.time(), "stats": stats.to_dict(),
            **({} if threads is None else {"requested_threads": int(threads)}),
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
