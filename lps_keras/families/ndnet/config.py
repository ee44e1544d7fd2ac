"""NDNet's config, presets and TensorFlow-free summary (parameters, MACs, output stride).

NDNet ("NDNet: Narrow While Deep Network for Real-Time Semantic Segmentation", Yang, Yu, Fu, Sun,
Jia et al.) as the authors' PyTorch code (github zgyang-hnu/NDNet: ``backbone/ndnet.py``,
``backbone/conv_module.py``, ``flops/NDNet_fcn32.py``, ``Seg_NDNet/NDNet_ende.py``) builds it:

* stem: 3x3 conv stride 2 (``stem_channels`` = 8, no bias) + BN + ReLU, then 3x3 max-pool stride 2
  padding 1 (1/4 of the input).
* three stages (the authors' ``block3/4/5``) of ``depths[s]`` narrow bottlenecks with ``channels[s]``
  mid channels and ``expansion * channels[s]`` output channels. A bottleneck is two
  depthwise-separable 3x3 convs, each *depthwise 3x3 (no BN, no activation, no bias) -> pointwise
  1x1 (no bias) -> BN*: the first with ReLU (``mid`` channels, carries the stride/dilation), the
  second without (``e * mid`` channels); then ``relu(residual + shortcut)``. The stride (and, for
  ``backbone_stride`` < 32, the dilation) sit on the depthwise convs; PyTorch pads
  ``dilation`` pixels on every side, which :class:`~lps_keras.families.layers.ConvBN` and the
  model's explicit zero padding reproduce.
* shortcut: identity, except in the first block of every stage, where the authors' code uses a
  third separable conv (depthwise 3x3 with the block's stride/dilation -> 1x1 -> BN, no ReLU). In the
  authors' code the condition is "stride > 1 or dilation > 1"; with their stride/dilation schedules
  that is exactly the first block of each stage, so the config needs no separate switch.
* ``backbone_stride`` (the authors' ``out_stride``): 32 = stages strided 2/2/2; 16 = 2/2/1 with
  dilation 2 in the last stage; 8 = 2/1/1 with dilations 2 and 4 (as ``backbone/ndnet.py``).
* ``head="fcn32"`` (``flops/NDNet_fcn32.py``'s ``DensePrediction``): separable 3x3 (``head_channels``
  = 64) + BN + ReLU, then a 1x1 classifier with bias over the last stage; the authors upsample x32
  bilinearly (``align_corners=True``).
* ``head="ende"`` (``Seg_NDNet/NDNet_ende.py``): the last stage (at ``backbone_stride`` 16) resized
  bilinearly (``align_corners=True``) to the first stage's size (1/8), concatenated *[last, first]*
  in that order, a 1x1 conv ``fusion_channels`` (256) + BN + ReLU, then the same separable + 1x1
  classifier head; the authors upsample x8 (``align_corners=True``).

Choices and where code and paper differ:

* The authors' training models carry an auxiliary head (``aux_seg``: separable 3x3 to 128 channels +
  1x1 classifier on the middle stage, loss weight 0.4). It exists only for their training loss; this
  project's loss takes one logits tensor, so it is not built, not counted (the parameter counts
  below are of the inference network, as the issue quotes them) and its ``aux_seg.*`` keys are
  skipped by :func:`lps_keras.families.ndnet.weights.load_ndnet_weights`.
* The authors' heads upsample by a fixed factor (``scale_factor``), which gives the input size only
  when it is a multiple of the output stride; ``upsample_logits=True`` here resizes to the input
  size (align-corners, as theirs).
* Paper Table II's e = 2 variants are not in the authors' code and the table was not available to
  us; ``ndnet29_e2``/``ndnet45_e2``/``ndnet61_e2`` keep the e = 4 presets' channel and depth
  combinations with ``expansion=2`` (a documented choice, not a verified copy of the table).
* Parameters are counted as PyTorch's ``parameters()``: conv weights (no biases except the
  classifier), BN gamma/beta; BN running statistics excluded. The deploy form folds each BN into its
  1x1/3x3 conv as a bias (the depthwise convs before them stay bias-free).
"""

from __future__ import annotations

import dataclasses

from lps_keras.families.family import FamilyError, check_choice, check_num_classes, config_from_dict, int_tuple

EXPANSIONS = (2, 4)
HEADS = ("fcn32", "ende")
INPUT_NORMS = ("imagenet", "symmetric")
BACKBONE_STRIDES = (8, 16, 32)
#: (stage strides, stage dilations) per backbone stride, as the authors' ``NDNet.__init__``.
STRIDE_SCHEDULES = {32: ((2, 2, 2), (1, 1, 1)), 16: ((2, 2, 1), (1, 1, 2)), 8: ((2, 1, 1), (1, 2, 4))}
#: The stem conv (stride 2) and max-pool (stride 2) come before the stages.
STEM_STRIDE = 4


def _int_choice(value, field: str, choices) -> None:
    # check_choice alone would let 4.0 or True through (4.0 == 4, True == 1).
    if isinstance(value, bool) or not isinstance(value, int):
        raise FamilyError(f"{field} must be one of {list(choices)}, got {value!r}")
    check_choice(value, field, choices)


def _positive_int(value, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FamilyError(f"{field} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class NDNetConfig:
    """One NDNet: backbone widths/depths, expansion, head and class count (see the module docstring)."""

    channels: tuple = (16, 32, 64)  # mid channels of the three stages (the paper's n_md)
    depths: tuple = (4, 12, 6)  # bottlenecks per stage (the paper's d)
    expansion: int = 4  # stage output channels = expansion * mid channels
    stem_channels: int = 8
    backbone_stride: int = 32  # the authors' out_stride: 32, 16 (last stage dilated) or 8
    head: str = "fcn32"  # "fcn32" | "ende"
    head_channels: int = 64  # the DensePrediction head's separable conv width
    fusion_channels: int = 256  # the ende head's 1x1 fusion conv (unused by fcn32)
    #: What the network expects after the project's ImageNet mean/std normalisation: "imagenet" feeds it
    #: as it is; "symmetric" first maps it back to the authors' RGB in [-1, 1] ((x / 255 - 0.5) * 2),
    #: a fixed per-channel affine layer (no weights), so their published weights work unchanged.
    input_norm: str = "imagenet"
    num_classes: int = 19

    def __post_init__(self):
        object.__setattr__(self, "channels", int_tuple(self.channels, "channels", length=3))
        object.__setattr__(self, "depths", int_tuple(self.depths, "depths", length=3))
        _int_choice(self.expansion, "expansion", EXPANSIONS)
        _positive_int(self.stem_channels, "stem_channels")
        _int_choice(self.backbone_stride, "backbone_stride", BACKBONE_STRIDES)
        check_choice(self.head, "head", HEADS)
        _positive_int(self.head_channels, "head_channels")
        _positive_int(self.fusion_channels, "fusion_channels")
        check_choice(self.input_norm, "input_norm", INPUT_NORMS)
        check_num_classes(self.num_classes)

    @classmethod
    def from_dict(cls, data) -> NDNetConfig:
        return config_from_dict(cls, data, "ndnet config")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["depths"] = list(self.depths)
        return d

    @property
    def stage_strides(self) -> tuple[int, int, int]:
        return STRIDE_SCHEDULES[self.backbone_stride][0]

    @property
    def stage_dilations(self) -> tuple[int, int, int]:
        return STRIDE_SCHEDULES[self.backbone_stride][1]

    @property
    def stage_out_channels(self) -> tuple[int, int, int]:
        return tuple(self.expansion * c for c in self.channels)

    @property
    def output_stride(self) -> int:
        """Input size / logits size (before upsampling), for sizes divisible by it."""
        return STEM_STRIDE * self.stage_strides[0] if self.head == "ende" else self.backbone_stride


def _preset(channels, depths, expansion=4, **extra) -> dict:
    return {"channels": list(channels), "depths": list(depths), "expansion": expansion, "stem_channels": 8,
            "backbone_stride": 32, "head": "fcn32", "head_channels": 64, "fusion_channels": 256, **extra}


_COMBOS = {"ndnet29": ((24, 48, 96), (3, 8, 3)), "ndnet45": ((16, 32, 64), (4, 12, 6)),
           "ndnet61": ((12, 24, 48), (6, 16, 8))}

#: Preset name -> config dict without ``num_classes``.
PRESETS: dict[str, dict] = {
    **{name: _preset(*combo) for name, combo in _COMBOS.items()},
    "ndnet29_wide": _preset((64, 128, 256), (3, 8, 3)),
    **{f"{name}_e2": _preset(*combo, expansion=2) for name, combo in _COMBOS.items()},
    # The encoder-decoder NDNet45 whose Cityscapes weights the authors publish (Seg_NDNet/ndnet.pth).
    # The model the authors publish Cityscapes weights for: it takes their input scaling.
    "ndnet45_ende": _preset((16, 32, 64), (4, 12, 6), backbone_stride=16, head="ende", input_norm="symmetric"),
}


# --------------------------------------------------------------------------- summary (no TensorFlow)
def _down(size: int, stride: int) -> int:
    # A 3x3 conv/pool with padding 1 (dilation d: padding d): out = (size - 1) // stride + 1.
    return (size - 1) // stride + 1


def _sep(cin: int, cout: int, hw: int) -> tuple[int, int, int]:
    """(training params, deploy params, MACs) of depthwise 3x3 -> 1x1 -> BN at ``hw`` output pixels."""
    weights = 9 * cin + cin * cout
    return weights + 2 * cout, weights + cout, weights * hw


def layer_counts(config: NDNetConfig, input_size=(1024, 2048)) -> dict:
    """Training params, deploy params and MACs summed over the network, plus the logits size."""
    h, w = input_size
    params = deploy = macs = 0

    def add(counts):
        nonlocal params, deploy, macs
        params, deploy, macs = params + counts[0], deploy + counts[1], macs + counts[2]

    h, w = _down(h, 2), _down(w, 2)
    stem = 27 * config.stem_channels
    add((stem + 2 * config.stem_channels, stem + config.stem_channels, stem * h * w))
    h, w = _down(h, 2), _down(w, 2)  # max-pool: no MACs

    cin = config.stem_channels
    sizes = []
    for mid, depth, stride, out in zip(config.channels, config.depths, config.stage_strides,
                                       config.stage_out_channels):
        h, w = _down(h, stride), _down(w, stride)
        for b in range(depth):
            add(_sep(cin, mid, h * w))
            add(_sep(mid, out, h * w))
            if b == 0:
                add(_sep(cin, out, h * w))
            cin = out
        sizes.append((h, w))

    if config.head == "ende":
        h, w = sizes[0]
        fused_in = config.stage_out_channels[2] + config.stage_out_channels[0]
        f = fused_in * config.fusion_channels
        add((f + 2 * config.fusion_channels, f + config.fusion_channels, f * h * w))
        cin = config.fusion_channels
    add(_sep(cin, config.head_channels, h * w))
    score = config.head_channels * config.num_classes
    add((score + config.num_classes, score + config.num_classes, score * h * w))
    return {"params": params, "params_deploy": deploy, "macs": macs, "logits_size": (h, w)}


def summary(config: NDNetConfig, input_size=(1024, 2048)) -> dict:
    """``{"params", "params_deploy", "macs", "output_stride"}`` of ``config`` at ``input_size``."""
    if not isinstance(config, NDNetConfig):
        raise FamilyError(f"ndnet summary expects an NDNetConfig, got {type(config).__name__}")
    counts = layer_counts(config, input_size)
    out_h = counts["logits_size"][0]
    return {"params": counts["params"], "params_deploy": counts["params_deploy"], "macs": counts["macs"],
            "output_stride": round(input_size[0] / out_h, 2)}
