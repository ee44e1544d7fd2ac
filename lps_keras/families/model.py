"""``FamilyModel``: the keras.Model the non-LPS families build, a functional graph carrying its config.

As keras-hub's backbones and :class:`lps_keras.model.LPSNet` do, the model is built from a config in
``__init__`` (so ``from_config`` rebuilds it exactly), ``model.family_config`` is that config and
``get_config()`` carries it as a dict. Unlike keras-hub there is no separate backbone/task pair:
each family here has one task (segmentation) and no published backbone weights used apart from
it (NDNet's published file is the whole encoder-decoder), so one model per family keeps the layer
names the weight loaders and the fusion rely on; a backbone split would come with a second task.
A family subclasses it with ``family``, ``config_type``,
``graph(config, deploy, upsample_logits, input_shape, sync_batchnorm) -> (image, logits)`` and
``default_name``.
"""

from __future__ import annotations

import keras


class FamilyModel(keras.Model):
    """A family's network for ``config`` (subclasses set ``family``, ``config_type`` and ``graph``).

    Args:
        config: the family's config object.
        deploy: every ConvBN as one conv with bias (BN folded) instead of conv + BN.
        upsample_logits: return logits bilinearly (align-corners) resized to the input size.
        input_shape: (H, W, 3); ``None`` sizes make a model that takes any size.
        dtype: the Keras dtype policy to build the layers with (default: the global policy).
        sync_batchnorm: BN statistics over the global batch across replicas (``tf.distribute``
            training); the deploy form has no BN.
    """

    family = ""
    config_type: type = type(None)

    @staticmethod
    def graph(config, deploy: bool, upsample_logits: bool, input_shape, sync_batchnorm: bool = False):
        raise NotImplementedError

    @classmethod
    def default_name(cls, config, deploy: bool) -> str:
        return f"{cls.family}{'_deploy' if deploy else ''}"

    def __init__(self, config, deploy: bool = False, upsample_logits: bool = False, input_shape=(None, None, 3),
                 name: str | None = None, dtype=None, sync_batchnorm: bool = False, **kwargs):
        if not isinstance(config, self.config_type):
            raise TypeError(f"{type(self).__name__} expects a {self.config_type.__name__}, got "
                            f"{type(config).__name__}: {config!r}")
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[-1] != 3:
            raise ValueError(f"input_shape must be (H, W, 3), got {input_shape!r}")
        previous = keras.config.dtype_policy()
        if dtype is not None:
            keras.config.set_dtype_policy(dtype)
        try:
            policy = keras.config.dtype_policy().name
            image, logits = self.graph(config, bool(deploy), bool(upsample_logits), input_shape,
                                       bool(sync_batchnorm) and not deploy)
        finally:
            keras.config.set_dtype_policy(previous)
        super().__init__(image, logits, name=name or self.default_name(config, bool(deploy)), **kwargs)
        self.family_config = config
        self.deploy = bool(deploy)
        self.upsample_logits = bool(upsample_logits)
        self.image_shape = input_shape
        self.policy_name = policy
        self.sync_batchnorm = bool(sync_batchnorm) and not self.deploy

    def get_config(self):
        return {
            "name": self.name, "trainable": self.trainable, "config": self.family_config.to_dict(),
            "deploy": self.deploy, "upsample_logits": self.upsample_logits, "input_shape": list(self.image_shape),
            "dtype": self.policy_name, "sync_batchnorm": self.sync_batchnorm,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["config"] = cls.config_type.from_dict(config["config"])
        return cls(**config)

    def deploy_twin(self):
        """The same config, input shape and dtype built with ``deploy=True`` (weights not copied)."""
        return type(self)(self.family_config, deploy=True, upsample_logits=self.upsample_logits,
                          input_shape=self.image_shape, name=f"{self.name}_deploy", dtype=self.policy_name)
