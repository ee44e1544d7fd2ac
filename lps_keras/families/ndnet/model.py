"""``build_ndnet``: an :class:`~lps_keras.families.ndnet.config.NDNetConfig` as a flat functional Keras model.

The architecture, and where it follows or departs from the authors' code, is described in
:mod:`lps_keras.families.ndnet.config`. The graph is flat (every layer with weights is a top-level
layer) so :func:`~lps_keras.families.layers.fuse_into` can fold BN by name. Layer names (stage and
block indices 1-based), shared by the training and deploy forms:

- ``stem``: :class:`ConvBN` 3x3 stride 2 + ReLU; ``stem_pool_pad`` + ``stem_pool``: 3x3 max-pool stride 2
- ``stage{s}_block{b}_{conv}_pad`` + ``stage{s}_block{b}_{conv}_dw``: the depthwise 3x3 (no bias in
  either form: no BN follows it directly) and ``stage{s}_block{b}_{conv}``: the 1x1 :class:`ConvBN`,
  for ``conv`` in ``conv1`` (ReLU), ``conv2`` and, in block 1, ``shortcut`` (no ReLU)
- ``stage{s}_block{b}_add``, ``stage{s}_block{b}_relu``: ``relu(residual + shortcut)``
- ende only: ``decoder_upsample`` (stage 3 at stage 1's size), ``decoder_concat``, ``fusion`` (1x1 ConvBN)
- ``head_pad`` + ``head_dw``, ``head_pw`` (1x1 ConvBN + ReLU), ``head_score`` (1x1 conv with bias)
- ``logits_upsample``: only with ``upsample_logits=True``, logits at the input size

Max-pooling pads with zeros where PyTorch pads with -inf: its input is a ReLU output (>= 0) and
every window holds at least one real pixel, so the maxima are the same.
"""

from __future__ import annotations

import keras

from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
from lps_keras.families.family import FamilyError
from lps_keras.families.layers import ConvBN, fuse_into
from lps_keras.families.model import FamilyModel
from lps_keras.families.ndnet.config import NDNetConfig
from lps_keras.layers import BilinearResize


@keras.saving.register_keras_serializable(package="lps_keras")
class NDNet(FamilyModel):
    """NDNet for ``config`` as a functional model; ``model.family_config`` and ``get_config()`` hold it.

    Args:
        config: an :class:`NDNetConfig`.
        deploy: every ConvBN as one conv with bias (BN folded) instead of conv + BN.
        upsample_logits: return logits bilinearly (align-corners) resized to the input size.
        input_shape: (H, W, 3); ``None`` sizes make a model that takes any size.
        dtype: the Keras dtype policy to build the layers with (default: the global policy).
    The authors' weights expect RGB inputs scaled to [-1, 1] (``(x / 255 - 0.5) * 2``).
    """

    family = "ndnet"
    config_type = NDNetConfig

    @staticmethod
    def graph(config, deploy, upsample_logits, input_shape, sync_batchnorm=False):
        return _graph(config, deploy, upsample_logits, input_shape, sync_batchnorm)

    @classmethod
    def default_name(cls, config, deploy):
        return f"ndnet_{config.head}{'_deploy' if deploy else ''}"


def build_ndnet(config: NDNetConfig, deploy: bool = False, upsample_logits: bool = False,
                input_shape=(None, None, 3), name: str | None = None, dtype=None,
                sync_batchnorm: bool = False) -> NDNet:
    """Build NDNet for ``config``: an :class:`NDNet` (arguments as there)."""
    return NDNet(config, deploy=deploy, upsample_logits=upsample_logits, input_shape=input_shape, name=name,
                 dtype=dtype, sync_batchnorm=sync_batchnorm)


def fuse_ndnet(model: NDNet) -> NDNet:
    """The deploy form of ``model`` (same config, input shape and dtype), each BN folded into its conv."""
    if not isinstance(model, NDNet):
        raise FamilyError(f"fuse_ndnet expects an NDNet model, got {type(model).__name__}")
    return model if model.deploy else fuse_into(model, model.deploy_twin())


def _depthwise(x, stride: int, dilation: int, name: str):
    """Depthwise 3x3 without bias, padded ``dilation`` on every side as PyTorch's ``padding=dilation``."""
    x = keras.layers.ZeroPadding2D(dilation, name=f"{name}_pad")(x)
    return keras.layers.DepthwiseConv2D(3, strides=stride, dilation_rate=dilation, padding="valid",
                                        use_bias=False, depthwise_initializer="he_normal", name=f"{name}_dw")(x)


def _separable(x, filters: int, stride: int, dilation: int, activation, bn: dict, name: str):
    """The authors' ``SepConvBR``: depthwise 3x3 -> 1x1 -> BN (-> ReLU). ``bn``: ConvBN's deploy / sync options."""
    x = _depthwise(x, stride, dilation, name)
    return ConvBN(filters, kernel_size=1, activation=activation, name=name, **bn)(x)


def _bottleneck(x, mid: int, out: int, stride: int, dilation: int, project: bool, bn: dict, name: str):
    residual = _separable(x, mid, stride, dilation, "relu", bn, f"{name}_conv1")
    residual = _separable(residual, out, 1, dilation, None, bn, f"{name}_conv2")
    shortcut = _separable(x, out, stride, dilation, None, bn, f"{name}_shortcut") if project else x
    y = keras.layers.Add(name=f"{name}_add")([residual, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def _graph(config: NDNetConfig, deploy: bool, upsample_logits: bool, input_shape, sync_batchnorm: bool = False):
    """The functional graph's (input, output) tensors."""
    bn = {"deploy": deploy, "synchronized_bn": sync_batchnorm}
    image = keras.Input(shape=input_shape, name="image")
    x = image
    if config.input_norm == "symmetric":
        # ImageNet-normalised x back to RGB in [-1, 1]: (x * std + mean - 0.5) * 2, per channel.
        x = keras.layers.Rescaling(scale=[2.0 * s for s in IMAGENET_STD], offset=[2.0 * m - 1.0 for m in IMAGENET_MEAN],
                                   name="input_norm")(x)
    x = ConvBN(config.stem_channels, kernel_size=3, strides=2, name="stem", **bn)(x)
    x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(x)

    stages = []
    for s, (mid, depth, stride, dilation, out) in enumerate(
            zip(config.channels, config.depths, config.stage_strides, config.stage_dilations,
                config.stage_out_channels), start=1):
        for b in range(1, depth + 1):
            first = b == 1
            x = _bottleneck(x, mid, out, stride if first else 1, dilation, project=first, bn=bn,
                            name=f"stage{s}_block{b}")
        stages.append(x)

    if config.head == "ende":
        last = BilinearResize(name="decoder_upsample")([stages[2], stages[0]])
        x = keras.layers.Concatenate(axis=-1, name="decoder_concat")([last, stages[0]])
        x = ConvBN(config.fusion_channels, kernel_size=1, name="fusion", **bn)(x)
    x = _depthwise(x, 1, 1, "head")
    x = ConvBN(config.head_channels, kernel_size=1, name="head_pw", **bn)(x)
    logits = keras.layers.Conv2D(config.num_classes, 1, use_bias=True, name="head_score")(x)
    if upsample_logits:
        logits = BilinearResize(name="logits_upsample")([logits, image])
    return image, logits
