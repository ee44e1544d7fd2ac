"""Path interactions of the paper's Fig. 3 / Table 3; ``make_interaction(name, ...)`` builds one.

Every interaction sits where LPS-Net's own does, after stages 3 and 4, so Table 3 compares only
the operation. ``bilateral_b`` is LPS-Net's :class:`~lps_keras.layers.PathInteraction` (each path
adds every other path, resized to its size, no parameters); ``none`` adds no layer (the paths meet
only at the final concatenation). The others are :class:`PathExchange` layers. The paper's text
leaves their exact form open; the choices made here (rules in :data:`lps_keras.block_specs.INTERACTIONS`):

- each sent feature goes through its own 1x1 conv + BN (no activation) at the *sender's*
  resolution, then is bilinearly resized (align corners) to the receiver's size. 1x1 conv and
  bilinear resize commute, so converting at the smaller size of the two only saves work when sending
  down; it is kept uniform for simplicity.
- ``direct_a``: low-resolution paths are added to the high-resolution ones (one direction, upward);
  ``direct_b``: high-resolution paths are added to the low-resolution ones (downward).
- ``attention_a``: the high-resolution path is gated by the low-resolution ones,
  ``x_i * sigmoid(sum_j T_ij(x_j))`` (a per-pixel, per-channel attention map);
  ``attention_b``: every path is gated so by every other.
- ``bilateral_a``: both directions, with the 1x1 conv + BN transforms (B is the same exchange
  without them, the cheap form LPS-Net keeps).

All outputs are computed from the inputs as given, never from already-updated paths. In the deploy
form each 1x1 conv carries its folded BN as a bias.
"""

from __future__ import annotations

import keras
from keras import ops

from lps_keras.block_specs import INTERACTIONS, interaction_pairs
from lps_keras.families.layers import ConvBN
from lps_keras.layers import PathInteraction, _same_static_size, _spatial_size, resize_bilinear

_PACKAGE = "lps_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PathExchange(keras.layers.Layer):
    """One exchange between paths by ``interaction`` (module docstring); takes and returns a list."""

    def __init__(self, interaction, deploy=False, bn_momentum=0.9, bn_epsilon=1e-5, kernel_initializer="he_normal",
                 **kwargs):
        super().__init__(**kwargs)
        if INTERACTIONS.get(interaction) is None:
            choices = [k for k, v in INTERACTIONS.items() if v is not None]
            raise ValueError(f"PathExchange interaction must be one of {choices}, got {interaction!r}")
        self.interaction = interaction
        self.deploy = bool(deploy)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.rule = INTERACTIONS[interaction]
        self.units = {}

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) < 2:
            raise ValueError(f"PathExchange {self.name!r} takes a list of at least two path features")
        self.pairs = interaction_pairs(self.interaction, len(input_shape))
        if not self.rule.transform:
            return
        for i, j in self.pairs:
            shape = input_shape[j]
            unit = ConvBN(int(input_shape[i][-1]), kernel_size=1, activation=None, deploy=self.deploy,
                          bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                          kernel_initializer=self.kernel_initializer, name=f"from{j + 1}_to{i + 1}",
                          dtype=self.dtype_policy)
            unit.build(tuple(shape))
            self.units[unit.name] = unit

    def call(self, inputs, training=None):
        incoming = [[] for _ in inputs]
        for i, j in self.pairs:
            x = inputs[j]
            if self.rule.transform:
                x = self.units[f"from{j + 1}_to{i + 1}"](x, training=training)
            target = inputs[i]
            incoming[i].append(x if _same_static_size(x, target) else resize_bilinear(x, _spatial_size(target)))
        outputs = []
        for xi, terms in zip(inputs, incoming):
            if not terms:
                outputs.append(xi)
                continue
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            outputs.append(xi + total if self.rule.combine == "add" else xi * ops.sigmoid(total))
        return outputs

    def compute_output_shape(self, input_shape):
        return list(input_shape)

    def fused_units(self) -> dict:
        """Unit name -> (kernel, bias), float64, each 1x1 conv's BN folded."""
        return {name: unit.fused_kernel_bias() for name, unit in self.units.items()}

    def get_config(self):
        config = super().get_config()
        config.update({
            "interaction": self.interaction, "deploy": self.deploy, "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon, "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config


def make_interaction(interaction: str, name: str, deploy: bool = False):
    """The layer for ``interaction`` (a list of paths in, a list out), or ``None`` for ``none``."""
    if INTERACTIONS[interaction] is None:
        return None
    if interaction == "bilateral_b":
        return PathInteraction(name=name)
    return PathExchange(interaction, deploy=deploy, name=name)
