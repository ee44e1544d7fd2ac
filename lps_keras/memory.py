"""Will the work fit in memory? The limit this process can use, and a refusal that names both numbers.

Refusing before the work starts beats a ``MemoryError`` traceback (or the kernel's OOM killer) half
way through an export: the message says what was estimated and what is available, so the user
can pick a smaller input size or a bigger machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lps_keras.errors import ResourceError

_GB = 1024**3


def _meminfo_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> tuple[Optional[int], str]:
    """(bytes this process may still allocate, where that number comes from); (None, "") if unknown.

    The smaller of MemAvailable and the cgroup's limit minus its usage (v2, else v1; "max" or v1's
    huge "unlimited" number mean no limit). The one reader for training's and export's refusals.
    """
    candidates = []
    meminfo = _meminfo_available()
    if meminfo is not None:
        candidates.append((meminfo, "MemAvailable in /proc/meminfo"))
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and limit < 2**60:
            candidates.append((max(0, limit - (usage or 0)),
                               f"the cgroup limit {limit / _GB:.1f} GiB minus its usage"))
            break
    return min(candidates) if candidates else (None, "")


def _read_int(path: str) -> Optional[int]:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):  # absent, or "max"
        return None


def check_memory(estimate_bytes: int, what: str, hint: str, available: Optional[int] = None) -> None:
    """Raise :class:`ResourceError` when ``estimate_bytes`` exceeds the available memory.

    ``what`` names the work (``"exporting at 20000x20000"``), ``hint`` what to do instead. Nothing
    is refused when the limit cannot be read (not Linux).
    """
    source = "MemAvailable / cgroup limit"
    if available is None:
        available, source = available_memory()
    if available is not None and estimate_bytes > available:
        raise ResourceError(f"{what} needs about {estimate_bytes / _GB:.1f} GB of memory, but only "
                            f"{available / _GB:.1f} GB is available ({source}); {hint}")
