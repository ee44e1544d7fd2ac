"""Named architectures, stored as data in ``presets.json`` (tiny/S/M/L and the paper's Table 4 rows).

A ``table4_stepNN`` preset carries a ``"table4"`` object beside its architecture: the expansion op
and multiple that produced it from the previous row, and the paper's latency and mIoU. They are
exposed as :data:`TABLE4` (preset name -> :class:`Table4Row`, in step order).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lps_keras.arch import EXPANSION_OPS_BY_NAME, Arch, ArchError

_PRESET_FILE = Path(__file__).with_name("presets.json")


@dataclasses.dataclass(frozen=True)
class Table4Row:
    """One row of the paper's Table 4 (besides B, C, R, which are the preset's :class:`Arch`).

    ``op`` and ``k``: the previous row expanded by ``k`` times the op of that name
    (:data:`lps_keras.arch.EXPANSION_OPS_BY_NAME`); both ``None`` for step 0 (N⁰).
    ``latency_ms``: TensorRT FP32, batch 1, 1024x2048, GTX 1070Ti. ``miou``: Cityscapes val (%).
    ``name``: the paper's model name where the row is one (``"LPS-Net-S"``), else ``None``.
    """

    step: int
    op: str | None
    k: int | None
    latency_ms: float
    miou: float
    name: str | None = None

    @classmethod
    def from_dict(cls, d, where: str) -> Table4Row:
        if not isinstance(d, dict):
            raise ArchError(f"{where} must be a mapping, got {d!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ArchError(f"{where}: unknown key(s) {sorted(unknown)!r}")
        missing = fields - {"name"} - set(d)
        if missing:
            raise ArchError(f"{where}: missing key(s) {sorted(missing)!r}")
        row = cls(**d)
        for key, least in (("step", 0), ("k", 1)):
            v = getattr(row, key)
            if (v is not None or key == "step") and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ArchError(f"{where}.{key} must be an int >= {least}, got {v!r}")
        if (row.op is None) != (row.k is None) or (row.op is None) != (row.step == 0):
            raise ArchError(f"{where}: op and k are null exactly for step 0, got step {row.step!r}, "
                            f"op {row.op!r}, k {row.k!r}")
        if row.op is not None and row.op not in EXPANSION_OPS_BY_NAME:
            raise ArchError(f"{where}.op must be one of {sorted(EXPANSION_OPS_BY_NAME)}, got {row.op!r}")
        for key in ("latency_ms", "miou"):
            v = getattr(row, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ArchError(f"{where}.{key} must be a positive number, got {v!r}")
        return row


def _load() -> tuple[dict[str, Arch], dict[str, Table4Row]]:
    raw = json.loads(_PRESET_FILE.read_text())
    presets, table4 = {}, {}
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        if isinstance(spec, dict) and "table4" in spec:
            spec = dict(spec)
            table4[name] = Table4Row.from_dict(spec.pop("table4"), f"{_PRESET_FILE.name}: {name}.table4")
        try:
            presets[name] = Arch.from_dict(spec)
        except ArchError as e:
            raise ArchError(f"{_PRESET_FILE.name}: preset {name!r}: {e}") from None
    return presets, dict(sorted(table4.items(), key=lambda item: item[1].step))


PRESETS: dict[str, Arch]
TABLE4: dict[str, Table4Row]
PRESETS, TABLE4 = _load()


def get_preset(name: str, num_classes: int = 19) -> Arch:
    """The preset ``name`` with ``num_classes`` output classes."""
    if name not in PRESETS:
        raise ArchError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].with_num_classes(num_classes)
