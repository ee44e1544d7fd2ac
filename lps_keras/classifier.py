"""``LPSClassifier``: the LPS-Net paths as an image classifier, for ImageNet pretraining.

The backbone is the segmentation model's own graph up to stage 5 (:class:`~lps_keras.model.LPSNet`
builds it, so every backbone layer has exactly the segmentation model's name: ``path1_resize``,
``path{p}_stage{s}_block{b}``, ``interaction_stage3`` / ``interaction_stage4``). On top of each
path's stage-5 features:

- ``classifier_pool_path{p}``: global average pooling
- ``classifier_concat``: the pooled features of all paths (only with more than one path)
- ``classifier_head``: one dense layer to class logits (float32 under mixed precision). A dense
  layer on the concatenation is the sum of one dense head per path, so every path is trained
  to be discriminative, as each is used on its own before the segmentation model's concat.

None of the head's names occurs in the segmentation model, so ``train.py --init`` (see
:func:`lps_keras.weights.init_weights`) takes exactly the backbone from a pretrained classifier
and reports the segmentation head as not loaded. ``include_head=False`` gives the backbone alone
(image -> pooled features), the form the pretraining run writes as its backbone file.
"""

from __future__ import annotations

import keras

from lps_keras.arch import Arch
from lps_keras.model import block_name, build_model

__all__ = ["LPSClassifier", "backbone_layer_names", "HEAD_PREFIX"]

#: Prefix of every layer the classifier adds on top of the backbone.
HEAD_PREFIX = "classifier_"


@keras.saving.register_keras_serializable(package="lps_keras")
class LPSClassifier(keras.Model):
    """LPS-Net's paths, global pooling and a dense head: ``arch.num_classes`` logits per image.

    Args:
        arch: blocks, widths and path ratios of the backbone; ``num_classes`` is the head's size.
        include_head: with ``False`` the output is the pooled features (``num_paths * width[-1]``).
        input_shape: (H, W, 3); ``None`` sizes make a model that takes any size.
        sync_batchnorm: synchronise BN statistics across replicas (tf.distribute).
        dtype: the Keras dtype policy to build the layers with (default: the global policy).
    Inputs are float NHWC images normalised with the ImageNet mean and std, as for :class:`LPSNet`.
    """

    def __init__(self, arch, include_head: bool = True, input_shape=(None, None, 3), sync_batchnorm: bool = False,
                 name: str | None = None, dtype=None, **kwargs):
        if not isinstance(arch, Arch):
            raise TypeError(f"LPSClassifier expects an Arch, got {type(arch).__name__}: {arch!r}")
        segmentation = build_model(arch, input_shape=input_shape, sync_batchnorm=sync_batchnorm, dtype=dtype)
        previous = keras.config.dtype_policy()
        if dtype is not None:
            keras.config.set_dtype_policy(dtype)
        try:
            policy = keras.config.dtype_policy().name
            # The segmentation graph's stage-5 outputs; its concat and head are not part of this model.
            features = [segmentation.get_layer(block_name(p, 5, arch.depth[4])).output
                        for p in range(1, arch.num_paths + 1)]
            pooled = [keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool_path{p}")(x)
                      for p, x in enumerate(features, start=1)]
            out = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name=f"{HEAD_PREFIX}concat")(pooled)
            if include_head:
                out = keras.layers.Dense(arch.num_classes, dtype="float32", name=f"{HEAD_PREFIX}head")(out)
        finally:
            keras.config.set_dtype_policy(previous)
        default_name = f"lps_classifier_{arch.hash}" if include_head else f"lps_backbone_{arch.hash}"
        super().__init__(segmentation.input, out, name=name or default_name, **kwargs)
        self.arch = arch
        self.include_head = bool(include_head)
        self.image_shape = tuple(input_shape)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.policy_name = policy

    def get_config(self):
        return {
            "name": self.name, "trainable": self.trainable, "arch": self.arch.to_dict(),
            "include_head": self.include_head, "input_shape": list(self.image_shape),
            "sync_batchnorm": self.sync_batchnorm, "dtype": self.policy_name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["arch"] = Arch.from_dict(config["arch"])
        return cls(**config)

    def backbone(self) -> LPSClassifier:
        """A head-less copy of this model with the same backbone weights (what ``--init`` needs)."""
        bare = LPSClassifier(self.arch, include_head=False, input_shape=self.image_shape, dtype=self.policy_name)
        for layer in bare.layers:
            if layer.weights:
                layer.set_weights(self.get_layer(layer.name).get_weights())
        return bare


def backbone_layer_names(model: keras.Model) -> list[str]:
    """The names of the layers with weights that a classifier shares with the segmentation model."""
    return [layer.name for layer in model.layers if layer.weights and not layer.name.startswith(HEAD_PREFIX)]
