"""The network models a latency profile can carry: one entry each in one table (as the backends are).

An entry says what :func:`~lps_keras.latency.profile.predict_latency`, the profile file and the profile builder
ask of a model: its name (the file's ``model.kind``), its feature names (stored in the file and checked when it
is loaded), how one network's features are computed at an input size, how the coefficients are fitted on
measured whole networks, and whether it needs the single-conv table timed on the device. Adding a model is
adding one entry::

    register_profile_model(ProfileModel(
        name="mine", features=("const", "gmacs"), summary="a + b GMACs",
        featurize=lambda arch, h, w, table: np.array([1.0, arch.macs(h, w) / 1e9]),
        fit=my_fit))   # my_fit(features [n, f], ms [n]) -> (coef, relative residual sd)

``python -m lps_keras.latency.profile --model`` offers every entry (and ``auto``: the one with the lower
leave-one-out error). Pure numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from lps_keras.arch import Arch
from lps_keras.latency.stats import LatencyError


@dataclasses.dataclass(frozen=True)
class ProfileModel:
    """One network model (see the module docstring). ``featurize(arch, height, width, table)`` is one image's
    feature vector (``table``: the profile's :class:`~lps_keras.latency.kernel_model.ConvTable`, or None);
    ``fit(features, ms)`` returns (coefficients, relative residual sd) from the features of measured networks
    (batch folded in) and their medians."""

    name: str
    features: tuple[str, ...]
    summary: str
    featurize: Callable[[Arch, int, int, Optional[object]], np.ndarray]
    fit: Callable[[np.ndarray, Sequence[float]], tuple[np.ndarray, float]]
    needs_table: bool = False


_MODELS: dict[str, ProfileModel] = {}


def register_profile_model(model: ProfileModel) -> ProfileModel:
    """Add (or replace) a model entry; returns it."""
    if not (model.name and model.features and model.summary and callable(model.featurize) and callable(model.fit)):
        raise ValueError(f"profile model {model.name!r} is incomplete: it needs a name, features, a summary, "
                         "featurize and fit")
    _MODELS[model.name] = model
    return model


def profile_model_names() -> tuple[str, ...]:
    return tuple(_MODELS)


def get_profile_model(name: str) -> ProfileModel:
    try:
        return _MODELS[name]
    except KeyError:
        raise LatencyError(f"unknown latency profile model {name!r}; known: {', '.join(_MODELS)}") from None


def describe_profile_models() -> str:
    return "; ".join(f"{m.name} over {list(m.features)}" for m in _MODELS.values())


# --------------------------------------------------------------------------- the two built-in models
def _linear_features(arch: Arch, height: int, width: int, table=None) -> np.ndarray:
    from lps_keras.latency.profile import arch_features

    return arch_features(arch, height, width)


def _linear_fit(features: np.ndarray, ms: Sequence[float]) -> tuple[np.ndarray, float]:
    from lps_keras.latency.profile import FEATURES
    from lps_keras.latency.profile_build import fit_features

    return fit_features(features, ms, FEATURES)


def _kernel_features(arch: Arch, height: int, width: int, table=None) -> np.ndarray:
    from lps_keras.latency.kernel_model import kernel_features

    return kernel_features(arch, height, width, table)


def _kernel_fit(features: np.ndarray, ms: Sequence[float]) -> tuple[np.ndarray, float]:
    from lps_keras.latency.kernel_model import fit_network_model

    return fit_network_model(features, ms)


def _register_builtins() -> None:
    from lps_keras.arch import NUM_STAGES
    from lps_keras.latency.kernel_model import FEATURES as KERNEL_FEATURES

    linear = ("const", *(f"gmacs_s{s}" for s in range(1, NUM_STAGES + 1)), "act_mb", "layers", "resize_mpix",
              "head_gmacs")
    register_profile_model(ProfileModel(
        "linear", linear, "whole-network latency, linear in conv MACs per stage, activation traffic, conv layers, "
        "resized pixels and head MACs (non-negative least squares on relative error)", _linear_features,
        _linear_fit))
    register_profile_model(ProfileModel(
        "kernels", KERNEL_FEATURES, "3x3 convs priced from single convs timed on the device, plus a fitted "
        "whole-network correction (lps_keras.latency.kernel_model)", _kernel_features, _kernel_fit,
        needs_table=True))


_register_builtins()
