"""The paper's design space as pure data: block types and path interactions, and their conv units.

LPS-Net's Section 3.2 / 4.3 (Table 2) compares the plain 3x3 conv with the light blocks of the works
it cites, and Section 3.3 (Fig. 3, Table 3) compares ways for the paths to exchange information.
This module says *which convolutions* each choice consists of, without importing Keras, so
:meth:`Arch.num_params` / :meth:`Arch.macs` and the Keras layers (:mod:`lps_keras.blocks`,
:mod:`lps_keras.interactions`) read one description and cannot drift apart.

A :class:`Unit` is one conv + BN (+ activation); its deploy form is that conv with a bias (the BN
folded in). ``at_input`` marks units that run at the block's input resolution (before its strided
conv); every other unit runs at the block's output resolution.
"""

from __future__ import annotations

import math
from typing import NamedTuple

DEFAULT_BLOCK = "conv3x3"
DEFAULT_INTERACTION = "bilateral_b"
#: MobileNetV2's expansion factor t of the inverted residual.
INVERTED_RESIDUAL_EXPANSION = 6
#: ResNet's bottleneck: the 3x3 conv runs at a quarter of the block's output channels.
BOTTLENECK_REDUCTION = 4


class Unit(NamedTuple):
    name: str
    kernel: int
    cin: int
    cout: int
    depthwise: bool = False
    stride: int = 1
    activation: str | None = "relu"
    at_input: bool = False


def _shortcut(cin, cout, stride):
    # ResNet option B: a projection only where the shape changes.
    return [] if stride == 1 and cin == cout else [Unit("shortcut", 1, cin, cout, stride=stride, activation=None)]


def _conv3x3(cin, cout, stride):
    # The RepVGG-style block of the paper; its deploy form is a single 3x3 conv + bias.
    return [Unit("conv", 3, cin, cout, stride=stride)]


def _residual(cin, cout, stride):
    return [Unit("conv1", 3, cin, cout, stride=stride), Unit("conv2", 3, cout, cout, activation=None),
            *_shortcut(cin, cout, stride)]


def _bottleneck(cin, cout, stride):
    mid = max(1, cout // BOTTLENECK_REDUCTION)
    return [Unit("reduce", 1, cin, mid, at_input=True), Unit("conv", 3, mid, mid, stride=stride),
            Unit("expand", 1, mid, cout, activation=None), *_shortcut(cin, cout, stride)]


def _sepconv3x3(cin, cout, stride):
    return [Unit("dw", 3, cin, cin, depthwise=True, stride=stride), Unit("pw", 1, cin, cout)]


def _inverted_residual(cin, cout, stride):
    hidden = INVERTED_RESIDUAL_EXPANSION * cin
    return [Unit("expand", 1, cin, hidden, activation="relu6", at_input=True),
            Unit("dw", 3, hidden, hidden, depthwise=True, stride=stride, activation="relu6"),
            Unit("project", 1, hidden, cout, activation=None)]


def ghost_primary(cout):
    return math.ceil(cout / 2)


def _ghost(cin, cout, stride):
    p = ghost_primary(cout)
    return [Unit("primary", 3, cin, p, stride=stride), Unit("cheap", 3, p, p, depthwise=True)]


def shuffle_split(cin, cout, stride) -> bool:
    """True where the ShuffleNetV2 unit splits its input (stride 1, channels unchanged)."""
    return stride == 1 and cin == cout


def _shufflenet_unit(cin, cout, stride):
    half = cout // 2
    if shuffle_split(cin, cout, stride):
        return [Unit("right_pw1", 1, half, half), Unit("right_dw", 3, half, half, depthwise=True, activation=None),
                Unit("right_pw2", 1, half, half)]
    return [Unit("left_dw", 3, cin, cin, depthwise=True, stride=stride, activation=None),
            Unit("left_pw", 1, cin, half),
            Unit("right_pw1", 1, cin, half, at_input=True),
            Unit("right_dw", 3, half, half, depthwise=True, stride=stride, activation=None),
            Unit("right_pw2", 1, half, half)]


#: Block type -> its units ``(cin, cout, stride) -> [Unit]``.
BLOCK_UNITS = {
    "conv3x3": _conv3x3,
    "residual": _residual,
    "bottleneck": _bottleneck,
    "sepconv3x3": _sepconv3x3,
    "inverted_residual": _inverted_residual,
    "ghost": _ghost,
    "shufflenet_unit": _shufflenet_unit,
}
BLOCK_TYPES = tuple(BLOCK_UNITS)


def block_units(block: str, cin: int, cout: int, stride: int) -> list[Unit]:
    return BLOCK_UNITS[block](cin, cout, stride)


class Interaction(NamedTuple):
    """Who receives from whom, through what, combined how (see :mod:`lps_keras.interactions`)."""

    senders: str  # "lower": lower-resolution paths; "higher"; "all" (every other path)
    transform: bool  # a 1x1 conv + BN on each sent feature (at the sender's resolution)
    combine: str  # "add": x_i + sum; "gate": x_i * sigmoid(sum)


#: Path interaction -> its rule; ``none`` concatenates only (Table 2's setting, Table 3's baseline).
INTERACTIONS = {
    "none": None,
    "direct_a": Interaction("lower", True, "add"),
    "direct_b": Interaction("higher", True, "add"),
    "attention_a": Interaction("lower", True, "gate"),
    "attention_b": Interaction("all", True, "gate"),
    "bilateral_a": Interaction("all", True, "add"),
    "bilateral_b": Interaction("all", False, "add"),
}
INTERACTION_TYPES = tuple(INTERACTIONS)
INTERACTION_AFTER_STAGES = (3, 4)


def senders_of(rule: str, receiver: int, num_paths: int) -> list[int]:
    """Path indices (0 = highest resolution) whose features ``receiver`` takes in."""
    if rule == "lower":
        return list(range(receiver + 1, num_paths))
    if rule == "higher":
        return list(range(receiver))
    return [j for j in range(num_paths) if j != receiver]


def interaction_pairs(interaction: str, num_paths: int) -> list[tuple[int, int]]:
    """(receiver, sender) pairs of one exchange; each has its own 1x1 conv where ``transform``."""
    rule = INTERACTIONS[interaction]
    if rule is None or num_paths < 2:
        return []
    return [(i, j) for i in range(num_paths) for j in senders_of(rule.senders, i, num_paths)]


def unit_params(u: Unit, deploy: bool = True) -> int:
    """Deploy: conv + bias. Training: conv without bias + BN's gamma, beta (statistics not counted)."""
    weights = u.kernel * u.kernel * (u.cin if u.depthwise else u.cin * u.cout)
    return weights + (u.cout if deploy else 2 * u.cout)


def unit_macs(u: Unit, out_hw: int) -> int:
    return out_hw * u.kernel * u.kernel * (u.cin if u.depthwise else u.cin * u.cout)
