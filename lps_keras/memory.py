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


def _cgroup_available() -> Optional[int]:
    """The container's memory limit minus its usage (cgroup v2, else v1); None when unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= 1 << 60:  # v1 "unlimited" is a huge number
            return None
        try:
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            usage = 0
        return max(int(text) - usage, 0)
    return None


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate: the smaller of MemAvailable and the cgroup's room."""
    values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(values) if values else None


def check_memory(estimate_bytes: int, what: str, hint: str, available: Optional[int] = None) -> None:
    """Raise :class:`ResourceError` when ``estimate_bytes`` exceeds the available memory.

    ``what`` names the work (``"exporting at 20000x20000"``), ``hint`` what to do instead. Nothing
    is refused when the limit cannot be read (not Linux).
    """
    available = available_memory() if available is None else available
    if available is not None and estimate_bytes > available:
        raise ResourceError(f"{what} needs about {estimate_bytes / _GB:.1f} GB of memory, but only "
                            f"{available / _GB:.1f} GB is available (MemAvailable / cgroup limit); {hint}")
