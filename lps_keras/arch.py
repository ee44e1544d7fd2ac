"""LPS-Net architecture description N = {B, C, R} and the expansion-op arithmetic.

An :class:`Arch` is pure data: it builds nothing and measures nothing. Everything that
depends only on the architecture (parameter count, conv MACs, hashing, expansion) lives here
so the search and the summary tools can run without TensorFlow doing any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

from lps_keras.block_specs import (
    BLOCK_TYPES,
    DEFAULT_BLOCK,
    DEFAULT_INTERACTION,
    INTERACTION_AFTER_STAGES,
    INTERACTION_TYPES,
    INTERACTIONS,
    block_units,
    interaction_pairs,
    unit_macs,
    unit_params,
)
from lps_keras.errors import LPSError

NUM_STAGES = 5
MAX_PATHS = 3
STAGE_STRIDES = (2, 2, 2, 2, 1)


class ArchError(LPSError, ValueError):
    """An architecture description is invalid; the message names the field."""


def _canonical_ratio(r: float) -> float:
    # Expansion adds multiples of 1/8 and the presets use 1/4, 3/4: snapping to a small
    # denominator keeps 0.1 + 0.2-style float noise out of hashes and sizes.
    return float(Fraction(r).limit_denominator(4096))


@dataclasses.dataclass(frozen=True)
class Arch:
    """Blocks per stage (``depth``), channels per stage (``width``), path input ratios.

    ``resolution`` is canonicalised on construction the way the official ``get_lpsnet``
    does it: zeros are dropped, positive ratios sorted high to low, then padded with zeros to
    three entries. ``(0.5, 0, 0.125)`` therefore equals ``(0.5, 0.125, 0)``.
    """

    depth: tuple[int, ...]
    width: tuple[int, ...]
    resolution: tuple[float, ...]
    num_classes: int = 19
    block: str = DEFAULT_BLOCK
    interaction: str = DEFAULT_INTERACTION

    def __post_init__(self):
        depth = _int_tuple(self.depth, "depth")
        width = _int_tuple(self.width, "width")
        for name, values in (("depth", depth), ("width", width)):
            if len(values) != NUM_STAGES:
                raise ArchError(f"{name} must have {NUM_STAGES} entries, got {list(values)!r}")
            for i, v in enumerate(values):
                if v < 1:
                    raise ArchError(f"{name}[{i}] must be >= 1, got {v!r}")
        try:
            res = tuple(float(r) for r in self.resolution)
        except (TypeError, ValueError):
            raise ArchError(f"resolution must be a list of numbers, got {self.resolution!r}") from None
        if not 1 <= len(res) <= MAX_PATHS:
            raise ArchError(f"resolution must have 1 to {MAX_PATHS} entries, got {list(res)!r}")
        for i, r in enumerate(res):
            if not math.isfinite(r) or r < 0:
                raise ArchError(f"resolution[{i}] must be a finite ratio >= 0, got {r!r}")
        positive = sorted((_canonical_ratio(r) for r in res if r > 0), reverse=True)
        if not positive:
            raise ArchError(f"resolution needs at least one positive ratio, got {list(res)!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ArchError(f"num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 2:
            raise ArchError(f"num_classes must be >= 2, got {self.num_classes!r}")
        for field, allowed in (("block", BLOCK_TYPES), ("interaction", INTERACTION_TYPES)):
            value = getattr(self, field)
            if not isinstance(value, str) or value not in allowed:
                raise ArchError(f"{field} must be one of {list(allowed)}, got {value!r}")
        if self.block == "shufflenet_unit":
            # The unit's two branches each produce half of the channels.
            for i, v in enumerate(width):
                if v % 2:
                    raise ArchError(f"width[{i}] must be even for block 'shufflenet_unit', got {v!r}")
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "resolution", tuple(positive) + (0.0,) * (MAX_PATHS - len(positive)))

    # ----------------------------------------------------------------- structure
    @property
    def ratios(self) -> tuple[float, ...]:
        """The positive path ratios, high to low (one per path)."""
        return tuple(r for r in self.resolution if r > 0)

    @property
    def num_paths(self) -> int:
        return len(self.ratios)

    def path_input_size(self, height: int, width: int, path: int = 0) -> tuple[int, int]:
        """Input size of ``path`` for an image of ``height`` x ``width`` (official int(H*r))."""
        r = self.ratios[path]
        return int(height * r), int(width * r)

    def feature_sizes(self, height: int, width: int, path: int = 0) -> list[tuple[int, int]]:
        """Spatial size after each stage of ``path`` (3x3, pad 1: out = ceil(in / stride))."""
        h, w = self.path_input_size(height, width, path)
        sizes = []
        for s in STAGE_STRIDES:
            h, w = -(-h // s), -(-w // s)
            sizes.append((h, w))
        return sizes

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Logit map size: after stage 5 of the first path (about 1/16 of that path's input)."""
        return self.feature_sizes(height, width, 0)[-1]

    def num_params(self) -> int:
        """Parameters of the fused deploy model (every conv with its BN folded into a bias, 1x1 head)."""
        per_path = sum(unit_params(u) for _, units in self._block_units() for u in units)
        head = self.width[-1] * self.num_paths * self.num_classes + self.num_classes
        return per_path * self.num_paths + head + self._interaction_params()

    def _block_units(self):
        """``(stage index, units)`` of every block of one path, in order."""
        c_in = 3
        for s, (d, c, stride) in enumerate(zip(self.depth, self.width, STAGE_STRIDES)):
            for b in range(d):
                yield s, block_units(self.block, c_in if b == 0 else c, c, stride if b == 0 else 1)
            c_in = c

    def _interaction_params(self) -> int:
        rule = INTERACTIONS[self.interaction]
        if rule is None or not rule.transform:
            return 0
        pairs = interaction_pairs(self.interaction, self.num_paths)
        c = [self.width[s - 1] for s in INTERACTION_AFTER_STAGES]
        return sum(len(pairs) * (w * w + w) for w in c)

    def macs(self, height: int = 1024, width: int = 2048) -> int:
        """Convolution multiply-accumulates of the deploy model at ``height`` x ``width``.

        Counts every conv of the blocks and the interactions and the 1x1 head (resizes,
        additions, gates and ReLUs are excluded, which is how the paper's GFLOPs column is counted).
        """
        total = 0
        for p in range(self.num_paths):
            sizes = self.feature_sizes(height, width, p)
            inputs = [self.path_input_size(height, width, p)] + sizes[:-1]
            seen = set()  # only a stage's first block starts at the previous stage's size
            for s, units in self._block_units():
                out_hw = sizes[s][0] * sizes[s][1]
                in_hw = inputs[s][0] * inputs[s][1] if s not in seen else out_hw
                seen.add(s)
                total += sum(unit_macs(u, in_hw if u.at_input else out_hw) for u in units)
        total += self._interaction_macs(height, width)
        h, w = self.output_size(height, width)
        total += h * w * self.width[-1] * self.num_paths * self.num_classes
        return total

    def _interaction_macs(self, height: int, width: int) -> int:
        rule = INTERACTIONS[self.interaction]
        if rule is None or not rule.transform:
            return 0
        total = 0
        for s in INTERACTION_AFTER_STAGES:
            c = self.width[s - 1]
            for _, j in interaction_pairs(self.interaction, self.num_paths):
                h, w = self.feature_sizes(height, width, j)[s - 1]  # the 1x1 conv runs at the sender's size
                total += h * w * c * c
        return total

    # ----------------------------------------------------------------- expansion
    def expand(self, op: ExpansionOp, k: int = 1) -> Arch:
        """``N + k * delta``: element-wise addition of an expansion op, then canonicalised."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ArchError(f"expansion multiple k must be an int >= 0, got {k!r}")
        return dataclasses.replace(
            self,
            depth=tuple(a + k * b for a, b in zip(self.depth, op.depth)),
            width=tuple(a + k * b for a, b in zip(self.width, op.width)),
            resolution=tuple(a + k * b for a, b in zip(self.resolution, op.resolution)),
        )

    def __add__(self, op: ExpansionOp) -> Arch:
        if not isinstance(op, ExpansionOp):
            return NotImplemented
        return self.expand(op, 1)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        d = {
            "depth": list(self.depth),
            "width": list(self.width),
            "resolution": [_ratio_json(r) for r in self.resolution],
            "num_classes": self.num_classes,
        }
        # Only a non-default choice is written, so the dict (and the hash, every cache key, journal,
        # preset and arch.json derived from it) of the paper's network is what it was before.
        if self.block != DEFAULT_BLOCK:
            d["block"] = self.block
        if self.interaction != DEFAULT_INTERACTION:
            d["interaction"] = self.interaction
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        if not isinstance(d, dict):
            raise ArchError(f"an arch must be a mapping, got {d!r}")
        unknown = set(d) - {"depth", "width", "resolution", "num_classes", "block", "interaction"}
        if unknown:
            raise ArchError(f"unknown arch key(s) {sorted(unknown)!r}")
        missing = {"depth", "width", "resolution"} - set(d)
        if missing:
            raise ArchError(f"arch is missing key(s) {sorted(missing)!r}")
        return cls(
            depth=d["depth"],
            width=d["width"],
            resolution=tuple(_parse_ratio(r, i) for i, r in enumerate(_as_list(d["resolution"], "resolution"))),
            num_classes=d.get("num_classes", 19),
            block=d.get("block", DEFAULT_BLOCK),
            interaction=d.get("interaction", DEFAULT_INTERACTION),
        )

    @classmethod
    def from_json(cls, s: str) -> Arch:
        return cls.from_dict(json.loads(s))

    def with_num_classes(self, num_classes: int) -> Arch:
        return dataclasses.replace(self, num_classes=num_classes)

    @property
    def hash(self) -> str:
        """Stable 12-hex-digit id of (depth, width, resolution, num_classes[, block, interaction])."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def short(self) -> str:
        """Paper notation, e.g. ``{1,3,3,10,10} {8,24,48,96,96} {3/4,1/4,0}`` (+ non-default choices)."""
        text = (
            "{" + ",".join(map(str, self.depth)) + "} "
            "{" + ",".join(map(str, self.width)) + "} "
            "{" + ",".join(str(Fraction(r).limit_denominator(4096)) for r in self.resolution) + "}"
        )
        if self.block != DEFAULT_BLOCK:
            text += f" block={self.block}"
        if self.interaction != DEFAULT_INTERACTION:
            text += f" interaction={self.interaction}"
        return text

    def __str__(self) -> str:
        return self.short()

    def differences(self, other: Arch, names: tuple[str, str] = ("this", "other")) -> str:
        """What differs from ``other``, e.g. ``num_classes 19 (weights) vs 11 (recipe)``; "" if equal."""

        def show(field, v):
            if field == "resolution":
                return "{" + ",".join(str(Fraction(r).limit_denominator(4096)) for r in v) + "}"
            return "{" + ",".join(map(str, v)) + "}" if isinstance(v, tuple) else str(v)

        return "; ".join(
            f"{f} {show(f, getattr(self, f))} ({names[0]}) vs {show(f, getattr(other, f))} ({names[1]})"
            for f in ("depth", "width", "resolution", "num_classes", "block", "interaction")
            if getattr(self, f) != getattr(other, f)
        )


@dataclasses.dataclass(frozen=True)
class ExpansionOp:
    """A delta on one dimension, e.g. depth (0,0,1,1,1)."""

    name: str
    dimension: str  # "depth" | "width" | "resolution"
    depth: tuple[int, ...] = (0,) * NUM_STAGES
    width: tuple[int, ...] = (0,) * NUM_STAGES
    resolution: tuple[float, ...] = (0.0,) * MAX_PATHS

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dimension": self.dimension,
            "depth": list(self.depth),
            "width": list(self.width),
            "resolution": [_ratio_json(r) for r in self.resolution],
        }


def _op(name: str, dim: str, delta: Sequence) -> ExpansionOp:
    return ExpansionOp(name=name, dimension=dim, **{dim: tuple(delta)})


#: The paper's operation set Delta: 3 depth, 4 width and 3 resolution deltas.
EXPANSION_OPS: tuple[ExpansionOp, ...] = (
    _op("depth_s2-5", "depth", (0, 1, 1, 1, 1)),
    _op("depth_s3-5", "depth", (0, 0, 1, 1, 1)),
    _op("depth_s4-5", "depth", (0, 0, 0, 1, 1)),
    _op("width_s1-5", "width", (4, 8, 16, 32, 32)),
    _op("width_s2-5", "width", (0, 8, 16, 32, 32)),
    _op("width_s3-5", "width", (0, 0, 16, 32, 32)),
    _op("width_s4-5", "width", (0, 0, 0, 32, 32)),
    _op("res_path1", "resolution", (0.125, 0.0, 0.0)),
    _op("res_path2", "resolution", (0.0, 0.125, 0.0)),
    _op("res_path3", "resolution", (0.0, 0.0, 0.125)),
)
EXPANSION_OPS_BY_NAME = {op.name: op for op in EXPANSION_OPS}


def _int_tuple(values, name) -> tuple[int, ...]:
    values = _as_list(values, name)
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise ArchError(f"{name}[{i}] must be an integer, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _as_list(values, name) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ArchError(f"{name} must be a list, got {values!r}")
    return list(values)


def _parse_ratio(r, i) -> float:
    """Accepts numbers and fraction strings such as "3/4"."""
    if isinstance(r, str):
        try:
            return float(Fraction(r))
        except (ValueError, ZeroDivisionError):
            raise ArchError(f"resolution[{i}] is not a number or fraction, got {r!r}") from None
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        raise ArchError(f"resolution[{i}] must be a number, got {r!r}")
    return float(r)


def _ratio_json(r: float):
    # Exact binary fractions (k/8, 3/4, ...) survive a float round trip; keep them numeric.
    return float(r)
