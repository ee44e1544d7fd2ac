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
    """

    width_multiplier: float = 1.0
    head_channels: int = 160
    lge: bool = True
    lge_reduction: int = 4
    num_classes: int = 19

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

    @classmethod
    def from_dict(cls, data) -> MRMSConfig:
        return config_from_dict(cls, data, where="MRMSConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def lge_channels(self) -> int:
        return max(8, self.head_channels // self.lge_reduction)


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


def backbone_blocks(config: MRMSConfig) -> list[Block]:
    """The MobileNetV2 blocks, in order, with their (rounded) widths."""
    blocks, cin = [], stem_channels(config)
    for s, rows in enumerate(STAGE_ROWS, start=1):
        b = 0
        for t, c, n, stride in rows:
            cout = make_divisible(c * config.width_multiplier)
            for i in range(n):
                b += 1
                blocks.append(Block(s, b, cin, cin * t, cout, stride if i == 0 else 1))
                cin = cout
    return blocks


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


def layer_plan(config: MRMSConfig) -> list[Conv]:
    """Every conv of the network (the only layers with weights), by the Keras layer name."""
    plan = [Conv("stage1_stem", 3, stem_channels(config), 3, False, True, 1)]
    level = 1
    for blk in backbone_blocks(config):
        if blk.expand:
            plan.append(Conv(f"{blk.prefix}_expand", blk.cin, blk.hidden, 1, False, True, level))
        level += blk.stride == 2
        plan.append(Conv(f"{blk.prefix}_dw", blk.hidden, blk.hidden, 3, True, True, level))
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


def level_size(size: int, level: int | None) -> int:
    """Height or width after ``level`` stride-2 3x3 convs with padding 1: ceil-halving."""
    if level is None:
        return 1
    for _ in range(level):
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
        macs += weights * level_size(h, conv.level) * level_size(w, conv.level)
    out_h = level_size(h, int(math.log2(OUTPUT_STRIDE)))
    return {"params": params, "params_deploy": params_deploy, "macs": macs,
            "output_stride": round(h / out_h, 2)}
