"""Named architectures, stored as data in ``presets.json`` (tiny/S/M/L and Table 4 steps)."""

from __future__ import annotations

import json
from pathlib import Path

from lps_keras.arch import Arch, ArchError

_PRESET_FILE = Path(__file__).with_name("presets.json")


def _load() -> dict[str, Arch]:
    raw = json.loads(_PRESET_FILE.read_text())
    return {name: Arch.from_dict(spec) for name, spec in raw.items() if not name.startswith("_")}


PRESETS: dict[str, Arch] = _load()


def get_preset(name: str, num_classes: int = 19) -> Arch:
    """The preset ``name`` with ``num_classes`` output classes."""
    if name not in PRESETS:
        raise ArchError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].with_num_classes(num_classes)
