"""The model families, one table: ``FAMILIES[name]`` is a :class:`~lps_keras.families.family.Family`.

Every tool (training, evaluation, export, prediction, the summary, the latency backends) builds,
fuses and summarises a model through its family's entry; adding a family = adding one entry here.
LPS-Net is the default; its re-parameterisation, Table 4 and the expansion stay LPS-only
(:meth:`Family.require` refuses them for other families with one clear line).

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
        features=frozenset({"reparameterize", "expansion", "table4", "official_weights"}),
    )


def _entries() -> dict[str, Family]:
    entries = [_lps_family()]
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


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "Family", "FamilyError", "family_of_model", "family_of_preset",
           "get_family"]
