"""What a model family is: one entry of :data:`lps_keras.families.FAMILIES`.

A family (LPS-Net, NDNet, MRMS, ...) is a frozen config dataclass with its allowed values, presets
as data, and four functions that every tool calls through the table instead of an if-chain:

* ``build(config, deploy=False, upsample_logits=False, input_shape=(None, None, 3), name=None,
  dtype=None)`` -> a ``keras.Model`` whose ``get_config`` carries the config (as keras-hub backbones
  do) and whose ``family_config`` attribute is the config object; layer names are deterministic.
* ``fuse(model)`` -> the inference form: the same function with BatchNorm folded into the convs
  (LPS-Net also merges its RepVGG branches); ``deploy=True`` builds that form directly.
* ``summary(config, input_size)`` -> ``{"params", "params_deploy", "macs", "output_stride"}``,
  counted without TensorFlow: ``params`` as the family's paper counts them (PyTorch's
  ``parameters()`` of the training form for NDNet and MRMS: conv weights, BN gamma/beta, no running
  statistics; the deploy form for LPS-Net), ``params_deploy`` of the fused form, ``macs`` of the
  convolutions (multiply-accumulates, one per kernel tap and output value) at ``input_size``, and
  ``output_stride`` = input height / logits height.

``build`` and ``fuse`` are named as ``"module:function"`` strings and imported on first use, so that
recipes, presets and the search can validate a family's config without importing Keras.

Config classes follow one contract (see :func:`config_from_dict`): ``from_dict(dict)`` rejects
unknown keys and bad values with a :class:`FamilyError` naming the field and quoting the value,
``to_dict()`` round-trips, and ``num_classes`` is a field.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from lps_keras.errors import LPSError


class FamilyError(LPSError, ValueError):
    """An unknown family or preset, a bad family config, or an LPS-only feature asked of another family."""


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: its config type, presets and how to build, fuse and summarise it."""

    name: str
    description: str
    config_type: type
    presets: Mapping[str, Mapping[str, Any]]  # preset name -> config dict without num_classes
    build_path: str  # "module:function", imported on first use (Keras)
    fuse_path: str
    summary: Callable[[Any, tuple[int, int]], dict]  # pure: no TensorFlow
    #: ``"module:function"`` taking ``(deploy_or_training_model, path)`` that loads the authors'
    #: published weights (``.pth`` / ``.npz``) into a model of this family; None: the family has none.
    weights_loader_path: str | None = None
    #: Whether ``train.mixed_precision: auto`` trains it in bf16 on a CPU with bf16 hardware: measured per
    #: family, since bf16 speeds dense 3x3 convolutions but not depthwise ones (README, "Mixed precision").
    cpu_bf16: bool = True

    def build(self, config, **kwargs):
        return _resolve(self.build_path)(config, **kwargs)

    def fuse(self, model):
        return _resolve(self.fuse_path)(model)

    def load_published_weights(self, model, path):
        if self.weights_loader_path is None:
            raise FamilyError(f"{path}: model family {self.name!r} has no published-weights format (.pth/.npz); "
                              "use a .keras model")
        return _resolve(self.weights_loader_path)(model, path)

    def config(self, preset: str | None = None, config: Mapping | None = None, num_classes: int = 19):
        """The config of ``preset`` (or of the explicit ``config`` dict) for ``num_classes`` classes."""
        if (preset is None) == (config is None):
            raise FamilyError(f"{self.name}: give exactly one of a preset and a config")
        if preset is not None:
            if preset not in self.presets:
                raise FamilyError(f"{self.name}: unknown preset {preset!r}; choose from {sorted(self.presets)}")
            config = self.presets[preset]
        return self.config_type.from_dict({**dict(config), "num_classes": num_classes})


def _resolve(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def config_from_dict(cls, data: Mapping, where: str | None = None):
    """``cls(**data)`` for a frozen config dataclass, refusing unknown keys by name."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise FamilyError(f"{where}: expected an object, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FamilyError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as e:  # a missing required field
        raise FamilyError(f"{where}: {e}") from None


def int_tuple(value, field: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as a tuple of ints >= ``minimum`` (of ``length`` entries), or a FamilyError naming ``field``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise FamilyError(f"{field} must be a list of integers, got {value!r}")
    out = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in out):
        raise FamilyError(f"{field} must be a list of integers, got {list(out)!r}")
    if length is not None and len(out) != length:
        raise FamilyError(f"{field} must have {length} entries, got {list(out)!r}")
    for i, v in enumerate(out):
        if v < minimum:
            raise FamilyError(f"{field}[{i}] must be >= {minimum}, got {v!r}")
    return out


def check_choice(value, field: str, choices) -> None:
    if value not in choices:
        raise FamilyError(f"{field} must be one of {list(choices)}, got {value!r}")


def check_num_classes(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise FamilyError(f"num_classes must be an int >= 2, got {value!r}")
