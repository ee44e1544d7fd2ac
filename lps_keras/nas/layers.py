"""Supernet layers: an inverted-residual block, the one-path mixed operator and mixed resize (keras.ops
only; the head is MRMS's own, :func:`lps_keras.families.mrms.model.lcf_head_model`).

A mixed layer runs only the sampled candidate (``ops.switch`` on the argmax of the
straight-through weights) and multiplies its output by that weight: forward value 1, gradient the
soft Gumbel probability (GDAS-style one path per step, as HMSeg samples one path). Every candidate
is built in ``build`` so that no variable is created inside a traced branch.
"""

from __future__ import annotations

import keras
from keras import ops

from lps_keras.families.layers import ConvBN
from lps_keras.layers import BilinearResize

_PACKAGE = "lps_keras"
IDENTITY = "identity"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InvertedResidual(keras.layers.Layer):
    """MobileNetV2 block: 1x1 expand (absent for expansion 1), k x k depthwise, linear 1x1 project,
    identity shortcut when stride 1 and widths match (the same layers as MRMS's blocks).

    ``deploy=True``: every ConvBN as one conv with bias (BN folded), the form a latency table times it in.
    """

    def __init__(self, cin, cout, expansion=6, kernel=3, strides=1, deploy=False, **kwargs):
        super().__init__(**kwargs)
        self.cin, self.cout, self.expansion, self.kernel, self.strides = cin, cout, expansion, kernel, strides
        self.deploy = bool(deploy)
        hidden = cin * expansion
        bn = {"deploy": self.deploy}
        self.expand = ConvBN(hidden, 1, activation="relu6", name="expand", **bn) if expansion != 1 else None
        self.dw = ConvBN(kernel_size=kernel, strides=strides, depthwise=True, activation="relu6", name="dw", **bn)
        self.project = ConvBN(cout, 1, activation=None, name="project", **bn)
        self.residual = strides == 1 and cin == cout

    def build(self, input_shape):
        n, h, w, _ = input_shape
        hidden = (n, h, w, self.cin * self.expansion)
        if self.expand is not None:
            self.expand.build(input_shape)
        self.dw.build(hidden)
        self.project.build(self.dw.compute_output_shape(hidden))

    def call(self, x, training=None):
        y = x if self.expand is None else self.expand(x, training=training)
        y = self.project(self.dw(y, training=training), training=training)
        return x + y if self.residual else y

    def compute_output_shape(self, input_shape):
        n, h, w, _ = self.dw.compute_output_shape(input_shape)
        return (n, h, w, self.cout)

    def get_config(self):
        config = super().get_config()
        config.update({"cin": self.cin, "cout": self.cout, "expansion": self.expansion, "kernel": self.kernel,
                       "strides": self.strides, "deploy": self.deploy})
        return config


def _one_path(index, weights, branches, x):
    """The sampled branch's output times its straight-through weight."""
    return ops.switch(index, branches, x) * ops.take(weights, index)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MixedOp(keras.layers.Layer):
    """One searchable layer: ``options`` are ``[expansion, kernel]`` pairs or ``"identity"``."""

    def __init__(self, cin, cout, strides, options, **kwargs):
        super().__init__(**kwargs)
        self.cin, self.cout, self.strides = cin, cout, strides
        self.options = [o if o == IDENTITY else list(o) for o in options]
        self.candidates = [None if o == IDENTITY else
                           InvertedResidual(cin, cout, o[0], o[1], strides, name=f"e{o[0]}_k{o[1]}")
                           for o in self.options]

    def build(self, input_shape):
        for c in self.candidates:
            if c is not None:
                c.build(input_shape)

    def call(self, x, weights, training=None):
        def branch(c):
            return (lambda v: v) if c is None else (lambda v: c(v, training=training))
        return _one_path(ops.argmax(weights), weights, [branch(c) for c in self.candidates], x)

    def compute_output_shape(self, input_shape, weights_shape=None):
        c = next(c for c in self.candidates if c is not None)
        return c.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"cin": self.cin, "cout": self.cout, "strides": self.strides, "options": self.options})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MixedResize(keras.layers.Layer):
    """A branch's down-sampling ratio: option ``r`` resizes by ``2 r`` before the stride-2 entry
    block (``r = 0.5``: no resize), as :class:`~lps_keras.families.mrms.MRMSConfig` does."""

    def __init__(self, ratios, **kwargs):
        super().__init__(**kwargs)
        self.ratios = [float(r) for r in ratios]
        self.resizers = [None if r == 0.5 else BilinearResize(scale=2 * r, name=f"r{r:g}") for r in self.ratios]

    def call(self, x, weights):
        def branch(r):
            return (lambda v: v) if r is None else (lambda v: r(v))
        return _one_path(ops.argmax(weights), weights, [branch(r) for r in self.resizers], x)

    def get_config(self):
        config = super().get_config()
        config.update({"ratios": self.ratios})
        return config
