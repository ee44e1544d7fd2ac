"""Layers the non-LPS families share: conv (or depthwise conv) + BN + activation, and fusion by name.

:class:`ConvBN` pads like PyTorch's ``padding=dilation * (k // 2)`` on every side, so a stride-2
conv samples the same grid as the authors' PyTorch code (Keras' ``padding="same"`` pads only
bottom/right for even sizes) and their weights load unchanged. Its deploy form is one conv with a
bias: :meth:`ConvBN.fused_kernel_bias` folds the BN, and :func:`fuse_into` copies a training model's
weights into a deploy model of the same config, layer by layer, by name.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

_PACKAGE = "lps_keras"
ACTIVATIONS = {"relu": ops.relu, "relu6": ops.relu6, None: None}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBN(keras.layers.Layer):
    """``activation(bn(conv(x)))``; ``depthwise=True`` makes the conv depthwise (``filters`` ignored).

    Training form: conv without bias + BatchNormalization. Deploy form (``deploy=True``): conv with
    bias, the BN folded in by :meth:`fused_kernel_bias`.
    """

    def __init__(self, filters=None, kernel_size=3, strides=1, dilation_rate=1, depthwise=False,
                 activation="relu", deploy=False, bn_momentum=0.9, bn_epsilon=1e-5, use_bias=False,
                 kernel_initializer="he_normal", synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        if not depthwise and (isinstance(filters, bool) or not isinstance(filters, int) or filters < 1):
            raise ValueError(f"ConvBN filters must be a positive int, got {filters!r}")
        if kernel_size not in (1, 3, 5, 7):
            raise ValueError(f"ConvBN kernel_size must be 1, 3, 5 or 7, got {kernel_size!r}")
        if strides not in (1, 2):
            raise ValueError(f"ConvBN strides must be 1 or 2, got {strides!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"ConvBN activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.depthwise = bool(depthwise)
        self.activation = activation
        self.deploy = bool(deploy)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_bias = bool(use_bias)  # a bias before the BN (the authors' code has some)
        self.synchronized_bn = bool(synchronized_bn)  # BN statistics across replicas (tf.distribute)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.pad = dilation_rate * (kernel_size // 2)
        bias = self.deploy or self.use_bias
        common = dict(kernel_size=kernel_size, strides=strides, dilation_rate=dilation_rate, padding="valid",
                      use_bias=bias, name="conv", dtype=self.dtype_policy)
        if self.depthwise:
            self.conv = keras.layers.DepthwiseConv2D(depthwise_initializer=self.kernel_initializer, **common)
        else:
            self.conv = keras.layers.Conv2D(filters, kernel_initializer=self.kernel_initializer, **common)
        self.bn = None if self.deploy else keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=bn_epsilon, synchronized=self.synchronized_bn, name="bn",
            dtype=self.dtype_policy)

    def build(self, input_shape):
        padded = list(input_shape)
        for axis in (1, 2):
            padded[axis] = None if padded[axis] is None else padded[axis] + 2 * self.pad
        self.conv.build(tuple(padded))
        if self.bn is not None:
            self.bn.build(self.compute_output_shape(input_shape))

    def call(self, x, training=None):
        if self.pad:
            x = ops.pad(x, [[0, 0], [self.pad, self.pad], [self.pad, self.pad], [0, 0]])
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y, training=training)
        act = ACTIVATIONS[self.activation]
        return y if act is None else act(y)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        k_eff = self.dilation_rate * (self.kernel_size - 1) + 1

        def out(size):
            return None if size is None else (size + 2 * self.pad - k_eff) // self.strides + 1
        return (n, out(h), out(w), c if self.depthwise else self.filters)

    def fused_kernel_bias(self):
        """The deploy conv's kernel and bias (float64): the BN (inference statistics) folded in."""
        weights = [np.asarray(w, dtype=np.float64) for w in self.conv.get_weights()]
        kernel = weights[0]
        if self.bn is None:  # deploy form: conv with bias
            return kernel, weights[1]
        bn = self.bn
        gamma = np.asarray(bn.gamma, dtype=np.float64)
        beta = np.asarray(bn.beta, dtype=np.float64)
        mean = np.asarray(bn.moving_mean, dtype=np.float64)
        var = np.asarray(bn.moving_variance, dtype=np.float64)
        factor = gamma / np.sqrt(var + bn.epsilon)
        if self.depthwise:  # kernel (k, k, C, 1): the channel is axis 2
            kernel = kernel * factor[None, None, :, None]
        else:
            kernel = kernel * factor
        bias = weights[1] if len(weights) > 1 else np.zeros_like(mean)
        return kernel, beta + (bias - mean) * factor

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
            "dilation_rate": self.dilation_rate, "depthwise": self.depthwise, "activation": self.activation,
            "deploy": self.deploy, "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
            "use_bias": self.use_bias, "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "synchronized_bn": self.synchronized_bn,
        })
        return config


def fuse_into(train_model, deploy_model):
    """Copy ``train_model``'s weights into ``deploy_model`` (same config, ``deploy=True``) by layer name.

    The families' models are flat functional graphs (every layer with weights is a top-level layer,
    as keras-hub's backbones are), so names match one to one. Every :class:`ConvBN` gets its folded
    kernel and bias; every other layer with weights gets them unchanged.
    """
    train_layers = {layer.name: layer for layer in train_model.layers}
    deploy_layers = {layer.name: layer for layer in deploy_model.layers}
    if set(train_layers) != set(deploy_layers):
        diff = sorted(set(train_layers) ^ set(deploy_layers))
        raise ValueError(f"training and deploy models differ in layers {diff[:8]}")
    for name, layer in train_layers.items():
        target = deploy_layers[name]
        if isinstance(layer, ConvBN):
            kernel, bias = layer.fused_kernel_bias()
            target.conv.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return deploy_model
