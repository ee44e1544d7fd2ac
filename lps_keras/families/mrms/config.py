"""MRMS / TinyMRMS config, presets and a pure-Python summary (no Keras, no TensorFlow).

The layer plan lives here (:func:`backbone_blocks`, :func:`layer_plan`) so that the summary and
the Keras graph in ``model.py`` read the same channel widths; see the package docstring for the
design choices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from lps_keras.families.family import FamilyError, check_num_classes, config_from_dict

#: MobileNetV2's (expansion t, channels c, repeats n, stride s) rows, grouped into the five
#: stride stages: stage k ends at 1/2**k of the input. Stage 1 also holds the 3x3 stride-2 stem.
STEM_CHANNELS = 32
STAGE_ROWS = (
    ((1, 16, 1, 1),),
    ((6, 24, 2, 2),),
    ((6, 32, 3, 2),),
    ((6, 64, 4, 2), (6, 96, 3, 1)),
    ((6, 160, 3, 2), (6, 320, 1, 1)),
)
OUTPUT_STRIDE = 8  # the head predicts at C3's resolution


@dataclasses.dataclass(frozen=True)
class MRMSConfig:
    """One MRMS network.

    Args:
        width_multiplier: MobileNetV2 width multiplier (channels rounded to multiples of 8, the
            stem included, as torchvision does); 1.0 = MRMS, 0.5 = TinyMRMS.
        head_channels: channels of the Lightweight Context Fusion head.
        lge: apply the Lightweight Global Enhancement (channel attention) in the LCF upper branch.
        lge_reduction: channel reduction inside the LGE's attention.
        num_classes: output classes (>= 2).
        blocks: searched operators (HMSeg's search, :mod:`lps_keras.nas.hmseg`), one entry per
            backbone block of MobileNetV2's table (17): ``{"expansion": e, "kernel": k}`` or
            ``"identity"`` (the block is skipped; only for blocks with an identity shortcut).
            ``None``: the hand-designed MRMS (the table's t, kernel 3).
        branch_ratios: searched down-sampling ratios of the high, medium and low resolution
            branches (the stride-2 entries of stages 3, 4 and 5), each in (0, 1). ``None`` or 0.5:
            the hand-designed stride-2 conv. Another ratio ``r`` bilinearly resizes the entry
            block's input by ``2 r`` (floor, as :class:`~lps_keras.layers.BilinearResize`) before
            that stride-2 block, so the branch runs at about ``r`` of the previous one.
    """

    width_multiplier: float = 1.0
    head_channels: int = 160
    lge: bool = True
    lge_reduction: int = 4
    num_classes: int = 19
    blocks: tuple | None = None
    branch_ratios: tuple | None = None

    def __post_init__(self):
        w = self.width_multiplier
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0.1 <= w <= 2.0):
            raise FamilyError(f"width_multiplier must be a number in [0.1, 2.0], got {w!r}")
        object.__setattr__(self, "width_multiplier", float(w))
        h = self.head_channels
        if isinstance(h, bool) or not isinstance(h, int) or h < 8:
            raise FamilyError(f"head_channels must be an int >= 8, got {h!r}")
        if not isinstance(self.lge, bool):
            raise FamilyError(f"lge must be true or false, got {self.lge!r}")
        r = self.lge_reduction
        if isinstance(r, bool) or not isinstance(r, int) or r < 1 or r > h:
            raise FamilyError(f"lge_reduction must be an int in [1, head_channels={h}], got {r!r}")
        check_num_classes(self.num_classes)
        object.__setattr__(self, "blocks", _check_blocks(self.blocks, self.width_multiplier))
        object.__setattr__(self, "branch_ratios", _check_ratios(self.branch_ratios))

    @classmethod
    def from_dict(cls, data) -> MRMSConfig:
        return config_from_dict(cls, data, where="MRMSConfig")

    def to_dict(self) -> dict[str, Any]:
        # The searched fields only when set, so hand-designed configs keep their old form.
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.blocks is None:
            del out["blocks"]
        else:
            out["blocks"] = [b if b == IDENTITY else {"expansion": b[0], "kernel": b[1]} for b in self.blocks]
        if self.branch_ratios is None:
            del out["branch_ratios"]
        else:
            out["branch_ratios"] = list(self.branch_ratios)
        return out

    def ratio(self, stage: int) -> float:
        """Down-sampling ratio of the branch that ``stage`` (3, 4, 5) starts; 0.5 for other stages."""
        if self.branch_ratios is None or stage not in RATIO_STAGES:
            return 0.5
        return self.branch_ratios[RATIO_STAGES.index(stage)]

    @property
    def lge_channels(self) -> int:
        return max(8, self.head_channels // self.lge_reduction)


IDENTITY = "identity"
#: The stages whose stride-2 entry is a resolution branch's down-sampling (``branch_ratios``).
RATIO_STAGES = (3, 4, 5)
NUM_BLOCKS = sum(n for rows in STAGE_ROWS for _, _, n, _ in rows)
KERNELS = (1, 3, 5, 7)


def _check_blocks(blocks, width_multiplier):
    if blocks is None:
        return None
    if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
        raise FamilyError(f"blocks must be a list of {NUM_BLOCKS} entries, got {blocks!r}")
    blocks = list(blocks)
    if len(blocks) != NUM_BLOCKS:
        raise FamilyError(f"blocks must have {NUM_BLOCKS} entries (one per backbone block), got {len(blocks)}")
    slots = block_slots(width_multiplier)
    out = []
    for i, (b, slot) in enumerate(zip(blocks, slots)):
        if b == IDENTITY:
            if not slot.residual:
                raise FamilyError(f"blocks[{i}] ({slot.prefix}) changes stride or width, it cannot be 'identity'")
            out.append(IDENTITY)
            continue
        if isinstance(b, dict):
            if set(b) != {"expansion", "kernel"}:
                raise FamilyError(f"blocks[{i}] must have the keys expansion and kernel, got {b!r}")
            b = (b["expansion"], b["kernel"])
        if not (isinstance(b, (tuple, list)) and len(b) == 2):
            raise FamilyError(f"blocks[{i}] must be {{'expansion': e, 'kernel': k}} or 'identity', got {b!r}")
        e, k = b
        if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= 8:
            raise FamilyError(f"blocks[{i}].expansion must be an int in [1, 8], got {e!r}")
        if k not in KERNELS or isinstance(k, bool):
            raise FamilyError(f"blocks[{i}].kernel must be one of {list(KERNELS)}, got {k!r}")
        out.append((e, k))
    return tuple(out)


def _check_ratios(ratios):
    if ratios is None:
        return None
    if isinstance(ratios, (str, bytes)) or not hasattr(ratios, "__iter__") or len(list(ratios)) != 3:
        raise FamilyError(f"branch_ratios must be 3 numbers (high, medium, low branch), got {ratios!r}")
    out = []
    for i, r in enumerate(ratios):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0:
            raise FamilyError(f"branch_ratios[{i}] must be a number in (0, 1), got {r!r}")
        out.append(float(r))
    return tuple(out)


PRESETS: dict[str, dict[str, Any]] = {
    "mrms": {"width_multiplier": 1.0, "head_channels": 160, "lge": True, "lge_reduction": 4},
    "tinymrms": {"width_multiplier": 0.5, "head_channels": 160, "lge": True, "lge_reduction": 4},
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: nearest multiple of ``divisor``, never 10% below ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


class Block(NamedTuple):
    """One inverted-residual block: names are ``stage{stage}_block{block}_*``."""

    stage: int
    block: int
    cin: int
    hidden: int  # == cin when the block has no expansion conv (t = 1)
    cout: int
    stride: int
    kernel: int = 3  # of the depthwise conv
    ratio: float = 0.5  # != 0.5: the input is resized by 2 * ratio first (a branch entry)

    @property
    def resize(self) -> bool:
        return self.ratio != 0.5

    @property
    def expand(self) -> bool:
        return self.hidden != self.cin

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout

    @property
    def prefix(self) -> str:
        return f"stage{self.stage}_block{self.block}"


def stem_channels(config: MRMSConfig) -> int:
    return make_divisible(STEM_CHANNELS * config.width_multiplier)


def block_slots(width_multiplier: float) -> list[Block]:
    """The hand-designed MobileNetV2 blocks, in order, with their (rounded) widths: the 17 slots
    that ``MRMSConfig.blocks`` fills."""
    blocks, cin = [], make_divisible(STEM_CHANNELS * width_multiplier)
    for s, rows in enumerate(STAGE_ROWS, start=1):
        b = 0
        for t, c, n, stride in rows:
            cout = make_divisible(c * width_multiplier)
            for i in range(n):
                b += 1
                blocks.append(Block(s, b, cin, cin * t, cout, stride if i == 0 else 1))
                cin = cout
    return blocks


def backbone_blocks(config: MRMSConfig) -> list[Block]:
    """The blocks of ``config``: the slots with the searched operators, identity slots left out
    (names keep the slot's number), branch entries with their ratios."""
    out = []
    for i, slot in enumerate(block_slots(config.width_multiplier)):
        choice = None if config.blocks is None else config.blocks[i]
        if choice == IDENTITY:
            continue
        if choice is not None:
            slot = slot._replace(hidden=slot.cin * choice[0], kernel=choice[1])
        if slot.stride == 2 and slot.block == 1:
            slot = slot._replace(ratio=config.ratio(slot.stage))
        out.append(slot)
    return out


def stage_channels(config: MRMSConfig) -> dict[int, int]:
    """Output channels of each stage (C1..C5)."""
    out = {}
    for block in backbone_blocks(config):
        out[block.stage] = block.cout
    return out


class Conv(NamedTuple):
    """A conv of the plan. ``level``: the map is the input halved ``level`` times (ceil), or
    ``None`` for a 1x1 pooled map. ``bn``: a ConvBN (training form has BN, no bias);
    otherwise a plain conv with bias."""

    name: str
    cin: int
    cout: int
    kernel: int
    depthwise: bool
    bn: bool
    level: int | None
    resized: bool = False  # the input of a branch entry, resized by 2 * ratio (level - 1 resized)


def layer_plan(config: MRMSConfig) -> list[Conv]:
    """Every conv of the network (the only layers with weights), by the Keras layer name."""
    plan = [Conv("stage1_stem", 3, stem_channels(config), 3, False, True, 1)]
    level = 1
    for blk in backbone_blocks(config):
        if blk.expand:
            plan.append(Conv(f"{blk.prefix}_expand", blk.cin, blk.hidden, 1, False, True, level + blk.resize,
                             blk.resize))
        level += blk.stride == 2
        plan.append(Conv(f"{blk.prefix}_dw", blk.hidden, blk.hidden, blk.kernel, True, True, level))
        plan.append(Conv(f"{blk.prefix}_project", blk.hidden, blk.cout, 1, False, True, level))
    c = stage_channels(config)
    d = config.head_channels
    plan.append(Conv("lcf_c5", c[5], d, 1, False, True, 5))
    plan.append(Conv("lcf_pool_conv", c[5], d, 1, False, False, None))
    if config.lge:
        plan.append(Conv("lge_reduce", d, config.lge_channels, 1, False, False, None))
        plan.append(Conv("lge_expand", config.lge_channels, d, 1, False, False, None))
    for lvl in (4, 3):
        plan.append(Conv(f"lcf_c{lvl}", c[lvl], d, 1, False, True, lvl))
        plan.append(Conv(f"lcf_fuse{lvl}_dw", d, d, 3, True, True, lvl))
        plan.append(Conv(f"lcf_fuse{lvl}_pw", d, d, 1, False, True, lvl))
    plan.append(Conv("classifier", d, config.num_classes, 1, False, False, 3))
    return plan


def level_size(size: int, level: int | None, config: MRMSConfig | None = None, resized: bool = False) -> int:
    """Height or width after ``level`` stride-2 convs with padding k // 2 (ceil-halving), each
    branch entry's input first resized by ``2 * ratio`` (floor) where ``config`` searched it.
    ``resized``: the size of that resized input of the entry into ``level`` instead."""
    if level is None:
        return 1
    for stage in range(1, level + 1):
        ratio = 0.5 if config is None else config.ratio(stage)
        if ratio != 0.5:
            size = int(size * 2 * ratio)
        if resized and stage == level:
            return size
        size = (size - 1) // 2 + 1
    return size


def summary(config: MRMSConfig, input_size=(1024, 2048)) -> dict:
    """Params (training form, as PyTorch counts them), deploy params, conv MACs, output stride."""
    h, w = input_size
    params = params_deploy = macs = 0
    for conv in layer_plan(config):
        taps = conv.kernel * conv.kernel * (1 if conv.depthwise else conv.cin)
        weights = taps * conv.cout
        params += weights + (2 * conv.cout if conv.bn else conv.cout)
        params_deploy += weights + conv.cout
        macs += (weights * level_size(h, conv.level, config, conv.resized)
                 * level_size(w, conv.level, config, conv.resized))
    out_h = level_size(h, int(math.log2(OUTPUT_STRIDE)), config)
    return {"params": params, "params_deploy": params_deploy, "macs": macs,
            "output_stride": round(h / out_h, 2)}
