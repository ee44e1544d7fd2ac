"""Structural re-parameterisation: training model -> new deploy model with fused weights."""

from __future__ import annotations

from lps_keras.layers import RepConvBlock
from lps_keras.model import LPSNet, build_model


def reparameterize(model: LPSNet) -> LPSNet:
    """Return a new deploy model equivalent (in inference mode) to ``model``.

    The deploy model is built from ``model.arch`` with the same options (logit upsampling, input
    shape, dtype policy) and every :class:`RepConvBlock` in deploy form (one 3x3 conv with bias);
    each block's branches and BNs are folded with :meth:`RepConvBlock.fused_kernel_bias` and
    written into the block of the same name. The other block types (:mod:`lps_keras.blocks`) and
    the parameterised interactions (:mod:`lps_keras.interactions`) keep their topology: each of
    their conv + BN units becomes the conv with the BN folded into a bias (``fused_units``); only
    the 3x3 conv block merges its branches into one conv. All other layers keep their weights.
    ``model`` itself is not modified.
    """
    if not isinstance(model, LPSNet):
        family = getattr(model, "family", "") if getattr(model, "family_config", None) is not None else ""
        hint = (f" (an {family!r} family model: re-parameterisation of RepVGG branches is LPS-Net only; "
                "lps_keras.families.fuse folds any family's BN)") if family else ""
        raise TypeError(f"reparameterize expects an LPS-Net model from build_model, got "
                        f"{type(model).__name__}{hint}")
    name = model.name if model.name.endswith("_deploy") else f"{model.name}_deploy"
    deploy = build_model(model.arch, deploy=True, upsample_logits=model.upsample_logits,
                         input_shape=model.image_shape, sync_batchnorm=model.sync_batchnorm, name=name,
                         dtype=model.policy_name)
    for layer in model.layers:
        if not layer.weights:
            continue
        target = deploy.get_layer(layer.name)
        if isinstance(layer, RepConvBlock):
            kernel, bias = layer.fused_kernel_bias()
            dtype = target.conv.kernel.dtype
            target.conv.set_weights([kernel.astype(dtype), bias.astype(dtype)])
        elif hasattr(layer, "fused_units"):
            for unit_name, (kernel, bias) in layer.fused_units().items():
                conv = target.units[unit_name].conv
                conv.set_weights([kernel.astype(conv.kernel.dtype), bias.astype(conv.kernel.dtype)])
        else:
            target.set_weights(layer.get_weights())
    return deploy
