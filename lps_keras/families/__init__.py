"""The model families, one table: ``FAMILIES[name]`` is a :class:`~lps_keras.families.family.Family`.

Every tool (training, evaluation, export, prediction, the summary, the latency backends) builds,
fuses and summarises a model through its family's entry; adding a family = adding one entry here.
LPS-Net is the default; its re-parameterisation, Table 4, the expansion and pretraining stay LPS-only:
they take the recipe's LPS-Net architecture (:meth:`lps_keras.recipe.Recipe.arch`), which refuses another
family's recipe with one clear line naming ``model.family``.

Importing this module imports no Keras: configs, presets and summaries are plain Python.
"""

from __future__ import annotations

from lps_keras.families.family import Family, FamilyError

DEFAULT_FAMILY = "lps"


def _lps_family() -> Family:
    from lps_keras.arch import Arch
    from lps_keras.presets import PRESETS

    def summary(arch: Arch, input_size=(1024, 2048)) -> dict:
        h, w = input_size
        out_h, _ = arch.output_size(h, w)
        n = arch.num_params()
        return {"params": n, "params_deploy": n, "macs": arch.macs(h, w), "output_stride": round(h / out_h, 2)}

    presets = {}
    for name, arch in PRESETS.items():
        d = arch.to_dict()
        d.pop("num_classes")
        presets[name] = d
    return Family(
        name="lps", description="LPS-Net (Zhang et al. 2022): multi-path 3x3 conv network, RepVGG training form",
        config_type=Arch, presets=presets, build_path="lps_keras.model:build_model",
        fuse_path="lps_keras.reparam:reparameterize", summary=summary,
        weights_loader_path="lps_keras.official:load_official_weights",
    )


def _entries() -> dict[str, Family]:
    from lps_keras.families import mrms, ndnet

    entries = [_lps_family(), ndnet.FAMILY, mrms.FAMILY]
    names = [p for f in entries for p in f.presets]
    assert len(names) == len(set(names)), "preset names must be unique across families"
    return {f.name: f for f in entries}


FAMILIES: dict[str, Family] = _entries()


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; choose from {sorted(FAMILIES)}") from None


def family_of_preset(preset: str) -> Family:
    """The family that defines ``preset`` (preset names are unique across families)."""
    for family in FAMILIES.values():
        if preset in family.presets:
            return family
    names = sorted(p for f in FAMILIES.values() for p in f.presets)
    raise FamilyError(f"unknown preset {preset!r}; choose from {names}")


def family_of_model(model) -> Family:
    """The family of a model built by a family's ``build`` (from its ``family`` attribute)."""
    return get_family(getattr(model, "family", DEFAULT_FAMILY))


def register_models() -> None:
    """Import every family's model module, registering its classes with Keras' serialisation.

    Loading a ``.keras`` file needs the class it was saved as (``lps_keras>NDNet``, ...); the loaders
    call this first, so a model of any family loads in a fresh process.
    """
    import importlib

    for family in FAMILIES.values():
        importlib.import_module(family.build_path.partition(":")[0])


def family_of_config(config) -> Family:
    """The family whose config type ``config`` is (an :class:`~lps_keras.arch.Arch` is LPS-Net's)."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_type):
            return family
    raise FamilyError(f"not a model config of any family: {config!r}")


def build(config, **kwargs):
    """``family.build(config, **kwargs)`` for the family of ``config``."""
    return family_of_config(config).build(config, **kwargs)


def fuse(model):
    """The inference form of ``model`` (BN folded; LPS-Net's branches merged); a deploy model as it is."""
    if getattr(model, "deploy", False):
        return model
    return family_of_model(model).fuse(model)


def config_of(model):
    """The config a family model was built from (``model.family_config``)."""
    config = getattr(model, "family_config", None)
    if config is None:
        raise FamilyError(f"model {getattr(model, 'name', model)!r} was not built by a model family")
    return config


def with_dtype(model, dtype: str, name: str | None = None):
    """A copy of the family model ``model`` computing under the Keras dtype policy ``dtype`` (the variables
    stay float32 either way), with the same weights: bf16 inference of an fp32 model, or float32 inference
    of a model saved by a ``mixed_bfloat16`` training run."""
    copy = build(config_of(model), deploy=model.deploy, upsample_logits=model.upsample_logits,
                 input_shape=model.input_shape[1:], name=name or model.name, dtype=dtype)
    for layer in model.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


def describe(config) -> str:
    """One line naming a config: the family and its compact form."""
    family = family_of_config(config)
    return str(config) if family.name == DEFAULT_FAMILY else f"{family.name} {config}"


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "Family", "FamilyError", "build", "config_of", "describe",
           "family_of_config", "family_of_model", "family_of_preset", "fuse", "get_family", "register_models"]
