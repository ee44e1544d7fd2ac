"""Structural re-parameterisation: training model -> new deploy model with fused weights."""

from __future__ import annotations

import keras
import numpy as np

from lps_keras.layers import RepConvBlock


def reparameterize(model: keras.Model) -> keras.Model:
    """Return a new deploy model equivalent (in inference mode) to ``model``.

    The graph is cloned with every :class:`RepConvBlock` replaced by its deploy form (one 3x3
    conv with bias); each block's branches and BNs are folded with
    :meth:`RepConvBlock.fused_kernel_bias` and written into the block of the same name. All
    other layers keep their weights. ``model`` itself is not modified.
    """

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, RepConvBlock):
            config["deploy"] = True
        return layer.__class__.from_config(config)

    deploy = keras.models.clone_model(model, clone_function=clone)
    deploy.name = model.name if model.name.endswith("_deploy") else f"{model.name}_deploy"
    for layer in model.layers:
        target = deploy.get_layer(layer.name)
        if isinstance(layer, RepConvBlock):
            kernel, bias = layer.fused_kernel_bias()
            dtype = target.conv.kernel.dtype
            target.conv.set_weights([kernel.astype(dtype), bias.astype(dtype)])
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return deploy


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Give every BN random statistics and affine parameters (for testing fusion).

    Fresh BNs are the identity (mean 0, var 1, gamma 1, beta 0), which would hide a wrong fold.
    """
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, RepConvBlock):
            yield from (sub for sub in (layer.bn, layer.bn_1x1, layer.bn_identity) if sub is not None)
