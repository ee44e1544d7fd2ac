"""``build_mrms`` / ``fuse_mrms``: MRMS as a flat functional Keras model that carries its config.

Layer names (shared by the training and deploy forms, which :func:`fuse_into` keys on):

- ``stage1_stem``: 3x3 stride-2 ConvBN (ReLU6)
- ``stage{s}_block{b}_expand`` / ``_dw`` / ``_project`` / ``_add``: MobileNetV2 inverted-residual
  blocks (1-based; ``_expand`` absent for t = 1, ``_add`` only for the identity shortcut;
  a searched config (``blocks``) may leave blocks out and change expansions and kernels, and
  ``branch_ratios`` add ``stage{s}_block1_resize`` before a branch entry)
- ``lcf_c5``, ``lcf_pool``, ``lcf_pool_conv``, ``lcf_pool_upsample``, ``lcf_add5``: the LCF upper branch, C5 plus the
  global-average-pooled C5
- ``lge_pool``, ``lge_reduce``, ``lge_expand``, ``lge_scale``: Lightweight Global Enhancement
- ``lcf_c{l}``, ``lcf_up{l}``, ``lcf_add{l}``, ``lcf_fuse{l}_dw``, ``lcf_fuse{l}_pw`` (l = 4, 3):
  lateral, upsampled upper branch, sum, depthwise-separable fusion
- ``classifier``: 1x1 conv with bias to logits at 1/8; ``logits_upsample`` with ``upsample_logits``
"""

from __future__ import annotations

import keras

from lps_keras.families.family import FamilyError
from lps_keras.families.layers import ConvBN, fuse_into
from lps_keras.families.model import FamilyModel
from lps_keras.families.mrms.config import MRMSConfig, backbone_blocks, stem_channels
from lps_keras.layers import BilinearResize


@keras.saving.register_keras_serializable(package="lps_keras")
class MRMS(FamilyModel):
    """MRMS / TinyMRMS for ``config``; ``model.family_config`` and ``get_config()`` hold the config.

    Args:
        config: an :class:`MRMSConfig`.
        deploy: every ConvBN as one conv with bias (BN folded), as :func:`fuse_mrms` makes it.
        upsample_logits: return logits bilinearly upsampled to the input size.
        input_shape: (H, W, 3); ``None`` sizes make a model that takes any size.
        dtype: the Keras dtype policy to build the layers with (default: the global policy).
    Inputs are float NHWC images already normalised with the ImageNet mean and std.
    """

    family = "mrms"
    config_type = MRMSConfig

    @staticmethod
    def graph(config, deploy, upsample_logits, input_shape, sync_batchnorm=False):
        return _graph(config, deploy, upsample_logits, input_shape, sync_batchnorm)

    @classmethod
    def default_name(cls, config, deploy):
        return f"mrms_w{config.width_multiplier:g}{'_deploy' if deploy else ''}"


def build_mrms(config: MRMSConfig, deploy: bool = False, upsample_logits: bool = False,
               input_shape=(None, None, 3), name: str | None = None, dtype=None,
               sync_batchnorm: bool = False) -> MRMS:
    """Build MRMS for ``config``: an :class:`MRMS` (arguments as there)."""
    return MRMS(config, deploy=deploy, upsample_logits=upsample_logits, input_shape=input_shape, name=name,
                dtype=dtype, sync_batchnorm=sync_batchnorm)


def fuse_mrms(model: MRMS) -> MRMS:
    """The deploy form of ``model`` (same config, input shape and dtype), each BN folded into its conv."""
    if not isinstance(model, MRMS):
        raise FamilyError(f"fuse_mrms expects an MRMS model, got {type(model).__name__}")
    return model if model.deploy else fuse_into(model, model.deploy_twin())


def lcf_head(c3, c4, c5, config: MRMSConfig, deploy: bool = False, sync_batchnorm: bool = False):
    """The Lightweight Context Fusion head with LGE on C3, C4, C5 (tensors); logits at C3's size.

    One builder for the MRMS graph and HMSeg's supernet (:func:`lcf_head_model`), so both run the same
    layers with the same names.
    """
    d = config.head_channels
    bn = {"deploy": deploy, "synchronized_bn": sync_batchnorm}
    # LCF upper branch: C5 plus the pooled C5 (global context), broadcast over C5's grid. The
    # pooled branch has a bias and no BN: BN over a 1x1 map would normalise over the batch
    # alone, degenerate at batch size 1.
    top = ConvBN(d, 1, activation=None, name="lcf_c5", **bn)(c5)
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="lcf_pool")(c5)
    pooled = keras.layers.Conv2D(d, 1, activation="relu", name="lcf_pool_conv")(pooled)
    # Spread to C5's grid before adding (the same values a broadcast gives): tf2onnx 1.17 fuses a broadcast
    # Add of a (1, 1, 1, C) tensor after a conv into that conv as a 4th input, an invalid ONNX graph.
    pooled = BilinearResize(name="lcf_pool_upsample")([pooled, top])
    top = keras.layers.Add(name="lcf_add5")([top, pooled])
    if config.lge:  # channel attention on the upper branch before it is spread to higher resolutions
        att = keras.layers.GlobalAveragePooling2D(keepdims=True, name="lge_pool")(top)
        att = keras.layers.Conv2D(config.lge_channels, 1, activation="relu", name="lge_reduce")(att)
        att = keras.layers.Conv2D(d, 1, activation="sigmoid", name="lge_expand")(att)
        top = keras.layers.Multiply(name="lge_scale")([top, att])
    for level, feat in ((4, c4), (3, c3)):
        lateral = ConvBN(d, 1, activation=None, name=f"lcf_c{level}", **bn)(feat)
        up = BilinearResize(name=f"lcf_up{level}")([top, lateral])
        top = keras.layers.Add(name=f"lcf_add{level}")([lateral, up])
        top = ConvBN(kernel_size=3, depthwise=True, activation="relu",
                     name=f"lcf_fuse{level}_dw", **bn)(top)
        top = ConvBN(d, 1, activation="relu", name=f"lcf_fuse{level}_pw", **bn)(top)
    return keras.layers.Conv2D(config.num_classes, 1, name="classifier")(top)


def lcf_head_model(channels: tuple[int, int, int], config: MRMSConfig, deploy: bool = False) -> keras.Model:
    """:func:`lcf_head` as a model on ``[C3, C4, C5]`` with ``channels`` channels each (the supernet's head)."""
    inputs = [keras.Input((None, None, c), name=f"c{level}") for level, c in zip((3, 4, 5), channels)]
    return keras.Model(inputs, lcf_head(*inputs, config, deploy), name="lcf")


def _graph(config: MRMSConfig, deploy: bool, upsample_logits: bool, input_shape, sync_batchnorm: bool = False):
    """The functional graph's (input, output) tensors."""
    bn = {"deploy": deploy, "synchronized_bn": sync_batchnorm}
    image = keras.Input(shape=input_shape, name="image")
    x = ConvBN(stem_channels(config), 3, strides=2, activation="relu6", name="stage1_stem", **bn)(image)
    stages = {}
    for blk in backbone_blocks(config):
        shortcut = x
        if blk.resize:  # a searched branch ratio (HMSeg): resize, then the block's stride-2 conv
            x = BilinearResize(scale=2 * blk.ratio, name=f"{blk.prefix}_resize")(x)
        if blk.expand:
            x = ConvBN(blk.hidden, 1, activation="relu6", name=f"{blk.prefix}_expand", **bn)(x)
        x = ConvBN(kernel_size=blk.kernel, strides=blk.stride, depthwise=True, activation="relu6",
                   name=f"{blk.prefix}_dw", **bn)(x)
        # Linear bottleneck: no activation after the projection (MobileNetV2).
        x = ConvBN(blk.cout, 1, activation=None, name=f"{blk.prefix}_project", **bn)(x)
        if blk.residual:
            x = keras.layers.Add(name=f"{blk.prefix}_add")([shortcut, x])
        stages[blk.stage] = x

    logits = lcf_head(stages[3], stages[4], stages[5], config, deploy, sync_batchnorm)
    if upsample_logits:
        logits = BilinearResize(name="logits_upsample")([logits, image])
    return image, logits
