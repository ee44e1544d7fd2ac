"""The block types of the paper's Table 2 as Keras layers; ``BLOCK_LAYERS[name]`` builds one.

``conv3x3`` is LPS-Net's own :class:`~lps_keras.layers.RepConvBlock`. The others follow the works
the paper cites, each made of :class:`~lps_keras.families.layers.ConvBN` units whose kernels, channel
counts and order come from :mod:`lps_keras.block_specs` (the same table ``Arch.num_params`` counts).
Choices the paper leaves open, made here:

- ``residual`` (ResNet basic block): 3x3 (stride) -> 3x3, a 1x1 projection shortcut only where the
  shape changes, ReLU after the sum.
- ``bottleneck`` (ResNet): 1x1 to ``filters // 4`` -> 3x3 (stride) -> 1x1 to ``filters``, shortcut
  as above, ReLU after the sum.
- ``sepconv3x3`` (MobileNet): depthwise 3x3 (stride) + BN + ReLU -> pointwise 1x1 + BN + ReLU.
- ``inverted_residual`` (MobileNetV2): 1x1 expand by 6 + ReLU6 -> depthwise 3x3 (stride) + ReLU6 ->
  linear 1x1 projection; identity added where stride is 1 and channels match.
- ``ghost`` (GhostNet's Ghost module replacing the 3x3 conv, ratio 2): a 3x3 primary conv (stride)
  to ``ceil(filters / 2)`` channels, a depthwise 3x3 "cheap operation" on them, both concatenated
  and cut to ``filters``. The primary conv keeps the 3x3 kernel of the conv it replaces, as
  GhostNet does when it swaps the convs of VGG/ResNet.
- ``shufflenet_unit`` (ShuffleNetV2 unit): stride 1 with unchanged channels splits the channels in
  halves, the right half goes 1x1 -> depthwise 3x3 -> 1x1; otherwise (first block of a stage) both
  branches take the whole input, left depthwise 3x3 (stride) -> 1x1, right 1x1 -> depthwise 3x3
  (stride) -> 1x1. The halves are concatenated and shuffled (2 groups). Widths must be even.

A 1x1 unit with stride 2 subsamples ``x[:, ::2, ::2]`` and runs a stride-1 conv: the same sampling
points, and a strided 1x1 Conv2D crashes TF 2.21's oneDNN CPU kernels in training (see RepConvBlock).

Deploy form (``deploy=True``): every unit is its conv with a bias; :func:`lps_keras.reparam.reparameterize`
writes each unit's BN-folded kernel into it. Branches are not merged: only the 3x3 conv block is
re-parameterisable into a single conv.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lps_keras.block_specs import block_units, ghost_primary, shuffle_split
from lps_keras.families.layers import ConvBN
from lps_keras.layers import RepConvBlock, check_block_args

_PACKAGE = "lps_keras"


class UnitBlock(keras.layers.Layer):
    """Base of the blocks made of ConvBN units; subclasses set ``block_type`` and ``forward``."""

    block_type = None

    def __init__(self, filters, strides=1, deploy=False, bn_momentum=0.9, bn_epsilon=1e-5, synchronized_bn=False,
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        check_block_args(type(self).__name__, filters, strides)
        self.filters = filters
        self.strides = strides
        self.deploy = bool(deploy)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.synchronized_bn = bool(synchronized_bn)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.units = {}

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs a known channel count, got {input_shape!r}")
        self.in_channels = int(input_shape[-1])
        out_shape = self.compute_output_shape(input_shape)
        for spec in block_units(self.block_type, self.in_channels, self.filters, self.strides):
            strided_1x1 = spec.kernel == 1 and spec.stride == 2
            unit = ConvBN(spec.cout, kernel_size=spec.kernel, strides=1 if strided_1x1 else spec.stride,
                          depthwise=spec.depthwise, activation=spec.activation, deploy=self.deploy,
                          bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                          kernel_initializer=self.kernel_initializer, synchronized_bn=self.synchronized_bn,
                          name=spec.name, dtype=self.dtype_policy)
            shape = input_shape if spec.at_input or spec.stride == 2 else out_shape
            unit.build(tuple(shape[:3]) + (spec.cin,))
            unit.strided_1x1 = strided_1x1
            unit.at_input = spec.at_input  # which resolution it runs at: for the summary's MAC count
            self.units[spec.name] = unit

    def unit(self, name, x, training=None):
        unit = self.units[name]
        if unit.strided_1x1:
            x = x[:, ::2, ::2, :]
        return unit(x, training=training)

    def call(self, x, training=None):
        return self.forward(x, training)

    def forward(self, x, training):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        if self.strides == 2:
            h = None if h is None else (h + 1) // 2
            w = None if w is None else (w + 1) // 2
        return (n, h, w, self.filters)

    def fused_units(self) -> dict:
        """Unit name -> (kernel, bias), float64, each unit's BN folded (what the deploy block holds)."""
        return {name: unit.fused_kernel_bias() for name, unit in self.units.items()}

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters, "strides": self.strides, "deploy": self.deploy,
            "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
            "synchronized_bn": self.synchronized_bn,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config


def _shortcut(block, x, training):
    return block.unit("shortcut", x, training) if "shortcut" in block.units else x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualBlock(UnitBlock):
    """ResNet basic block (module docstring)."""

    block_type = "residual"

    def forward(self, x, training):
        y = self.unit("conv2", self.unit("conv1", x, training), training)
        return ops.relu(y + _shortcut(self, x, training))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BottleneckBlock(UnitBlock):
    """ResNet bottleneck block (module docstring)."""

    block_type = "bottleneck"

    def forward(self, x, training):
        y = self.unit("reduce", x, training)
        y = self.unit("expand", self.unit("conv", y, training), training)
        return ops.relu(y + _shortcut(self, x, training))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SepConvBlock(UnitBlock):
    """MobileNet depthwise-separable 3x3 conv (module docstring)."""

    block_type = "sepconv3x3"

    def forward(self, x, training):
        return self.unit("pw", self.unit("dw", x, training), training)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InvertedResidualBlock(UnitBlock):
    """MobileNetV2 inverted residual with linear bottleneck (module docstring)."""

    block_type = "inverted_residual"

    def forward(self, x, training):
        y = self.unit("project", self.unit("dw", self.unit("expand", x, training), training), training)
        return y + x if self.strides == 1 and self.in_channels == self.filters else y


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GhostBlock(UnitBlock):
    """GhostNet Ghost module in place of the 3x3 conv (module docstring)."""

    block_type = "ghost"

    def forward(self, x, training):
        primary = self.unit("primary", x, training)
        y = ops.concatenate([primary, self.unit("cheap", primary, training)], axis=-1)
        return y if 2 * ghost_primary(self.filters) == self.filters else y[..., :self.filters]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ShuffleUnit(UnitBlock):
    """ShuffleNetV2 unit (module docstring); the shuffle is a fixed channel gather."""

    block_type = "shufflenet_unit"

    def build(self, input_shape):
        super().build(input_shape)
        half = self.filters // 2
        # Channel shuffle with 2 groups: reshape (2, half) -> transpose -> flatten, as one gather.
        self.shuffle = np.array([(k % 2) * half + k // 2 for k in range(self.filters)], dtype="int32")

    def forward(self, x, training):
        half = self.filters // 2
        if shuffle_split(self.in_channels, self.filters, self.strides):
            left, right = x[..., :half], x[..., half:]
        else:
            left = self.unit("left_pw", self.unit("left_dw", x, training), training)
            right = x
        right = self.unit("right_pw2", self.unit("right_dw", self.unit("right_pw1", right, training), training),
                          training)
        return ops.take(ops.concatenate([left, right], axis=-1), self.shuffle, axis=-1)


#: Block type -> the layer class that builds it; every class takes (filters, strides, deploy, ...).
BLOCK_LAYERS = {
    "conv3x3": RepConvBlock,
    "residual": ResidualBlock,
    "bottleneck": BottleneckBlock,
    "sepconv3x3": SepConvBlock,
    "inverted_residual": InvertedResidualBlock,
    "ghost": GhostBlock,
    "shufflenet_unit": ShuffleUnit,
}
