"""``build_model``: an :class:`~lps_keras.arch.Arch` as a functional Keras model that carries its Arch.

The model is an :class:`LPSNet`, a functional ``keras.Model`` whose ``get_config`` holds the
arch and build options (as keras-hub backbones do): ``model.arch`` is the architecture, and a
saved ``.keras`` file is rebuilt from it, so nothing has to recover the arch from layer names.

Layer names are deterministic and shared by the training and deploy forms, which is what
weight transfer (re-parameterisation, official weights, checkpoints) keys on:

- ``path{p}_resize``: the path's input, the image resized by its ratio (skipped for ratio 1)
- ``path{p}_stage{s}_block{b}``: :class:`RepConvBlock` (or the arch's ``block`` type from
  :data:`lps_keras.blocks.BLOCK_LAYERS`), 1-based indices; block 1 of stages 1-4 has stride 2
- ``interaction_stage3``, ``interaction_stage4``: Bilateral-B (or the arch's ``interaction``, see
  :mod:`lps_keras.interactions`; none for ``interaction="none"``) after stages 3 and 4
- ``path{p}_upsample`` (p >= 2), ``concat``: lower paths at the first path's size, concatenated
- ``head``: 1x1 conv with bias to class logits (1/16 of the first path's input)
- ``logits_upsample``: only with ``upsample_logits=True``, logits at the input size
"""

from __future__ import annotations

import keras

from lps_keras.arch import STAGE_STRIDES, Arch
from lps_keras.block_specs import INTERACTION_AFTER_STAGES
from lps_keras.blocks import BLOCK_LAYERS
from lps_keras.interactions import make_interaction
from lps_keras.layers import BilinearResize


def block_name(path: int, stage: int, block: int) -> str:
    """Name of a conv block; all indices 1-based."""
    return f"path{path}_stage{stage}_block{block}"


@keras.saving.register_keras_serializable(package="lps_keras")
class LPSNet(keras.Model):
    """LPS-Net for ``arch`` as a functional model; ``model.arch`` and ``get_config()`` hold the arch.

    Args:
        arch: blocks, widths, path ratios and class count.
        deploy: plain 3x3 conv + bias + ReLU blocks (the re-parameterised form) instead of the
            multi-branch training blocks.
        upsample_logits: return logits bilinearly upsampled to the input size.
        input_shape: (H, W, 3); ``None`` sizes make a model that takes any size.
        sync_batchnorm: synchronise BN statistics across replicas (tf.distribute).
        dtype: the Keras dtype policy to build the layers with (default: the global policy).
    Inputs are float NHWC images already normalised with the ImageNet mean and std.
    """

    #: The model family (:mod:`lps_keras.families`) every tool dispatches on.
    family = "lps"

    def __init__(self, arch, deploy: bool = False, upsample_logits: bool = False, input_shape=(None, None, 3),
                 sync_batchnorm: bool = False, name: str | None = None, dtype=None, **kwargs):
        if not isinstance(arch, Arch):
            raise TypeError(f"build_model expects an Arch, got {type(arch).__name__}: {arch!r}")
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[-1] != 3:
            raise ValueError(f"input_shape must be (H, W, 3), got {input_shape!r}")
        previous = keras.config.dtype_policy()
        if dtype is not None:
            keras.config.set_dtype_policy(dtype)
        try:
            policy = keras.config.dtype_policy().name
            image, logits = _graph(arch, deploy, upsample_logits, input_shape, sync_batchnorm)
        finally:
            keras.config.set_dtype_policy(previous)
        super().__init__(image, logits, name=name or f"lpsnet_{arch.hash}{'_deploy' if deploy else ''}", **kwargs)
        self.arch = arch
        self.deploy = bool(deploy)
        self.upsample_logits = bool(upsample_logits)
        self.image_shape = input_shape
        self.sync_batchnorm = bool(sync_batchnorm)
        self.policy_name = policy

    @property
    def family_config(self) -> Arch:
        return self.arch

    def get_config(self):
        return {
            "name": self.name, "trainable": self.trainable, "arch": self.arch.to_dict(), "deploy": self.deploy,
            "upsample_logits": self.upsample_logits, "input_shape": list(self.image_shape),
            "sync_batchnorm": self.sync_batchnorm, "dtype": self.policy_name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["arch"] = Arch.from_dict(config["arch"])
        return cls(**config)


def build_model(
    arch: Arch,
    deploy: bool = False,
    upsample_logits: bool = False,
    input_shape=(None, None, 3),
    sync_batchnorm: bool = False,
    name: str | None = None,
    dtype=None,
) -> LPSNet:
    """Build LPS-Net for ``arch``: an :class:`LPSNet` (arguments as there)."""
    return LPSNet(arch, deploy=deploy, upsample_logits=upsample_logits, input_shape=input_shape,
                  sync_batchnorm=sync_batchnorm, name=name, dtype=dtype)


def _graph(arch: Arch, deploy: bool, upsample_logits: bool, input_shape, sync_batchnorm: bool):
    """The functional graph's (input, output) tensors."""
    image = keras.Input(shape=input_shape, name="image")
    paths = []
    for p, ratio in enumerate(arch.ratios, start=1):
        paths.append(image if ratio == 1.0 else BilinearResize(scale=ratio, name=f"path{p}_resize")(image))

    block_layer = BLOCK_LAYERS[arch.block]
    for s, (depth, width, stride) in enumerate(zip(arch.depth, arch.width, STAGE_STRIDES), start=1):
        for p in range(len(paths)):
            x = paths[p]
            for b in range(1, depth + 1):
                x = block_layer(
                    width, strides=stride if b == 1 else 1, deploy=deploy,
                    synchronized_bn=sync_batchnorm, name=block_name(p + 1, s, b),
                )(x)
            paths[p] = x
        if s in INTERACTION_AFTER_STAGES and len(paths) > 1:
            interaction = make_interaction(arch.interaction, f"interaction_stage{s}", deploy)
            paths = paths if interaction is None else list(interaction(paths))

    if len(paths) > 1:
        upsampled = [BilinearResize(name=f"path{p}_upsample")([x, paths[0]]) for p, x in enumerate(paths[1:], start=2)]
        features = keras.layers.Concatenate(axis=-1, name="concat")([paths[0], *upsampled])
    else:
        features = paths[0]
    logits = keras.layers.Conv2D(arch.num_classes, 1, use_bias=True, name="head")(features)
    if upsample_logits:
        logits = BilinearResize(name="logits_upsample")([logits, image])
    return image, logits
