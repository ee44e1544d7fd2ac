"""lps_keras.latency.profile_models: a latency profile's network models are one table; a model added as one
entry is fitted, chosen by ``auto``, stored, loaded and predicts like the built-in ones; an unknown one is refused."""

import json

import numpy as np
import pytest

from lps_keras.arch import Arch
from lps_keras.latency import profile_models
from lps_keras.latency.profile import FEATURES, ProfileError, load_profile, predict_latency
from lps_keras.latency.profile_build import choose_model, finish_profile, random_walks

SHAPE = (1, 64, 96, 3)
N0 = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,), num_classes=11)


def test_every_builtin_entry_is_complete_and_linear_is_the_profiles_features():
    assert profile_models.profile_model_names()[:2] == ("linear", "kernels")
    assert profile_models.get_profile_model("linear").features == FEATURES
    assert profile_models.get_profile_model("kernels").needs_table
    with pytest.raises(Exception, match="unknown latency profile model 'nope'; known: linear, kernels"):
        profile_models.get_profile_model("nope")
    with pytest.raises(ValueError, match="incomplete"):
        profile_models.register_profile_model(profile_models.ProfileModel("x", (), "s", len, len))


def test_a_model_added_as_one_entry_is_fitted_chosen_stored_and_predicts(tmp_path, monkeypatch):
    # "macs": latency = a + b * GMACs at the input size; timings made by that law with a = 0.3, b = 40
    def featurize(arch, h, w, table=None):
        return np.array([1.0, arch.macs(h, w) / 1e9])

    def fit(x, ms):
        coef, *_ = np.linalg.lstsq(np.asarray(x), np.asarray(ms), rcond=None)
        return coef, 0.0

    monkeypatch.setattr(profile_models, "_MODELS", dict(profile_models._MODELS))
    profile_models.register_profile_model(profile_models.ProfileModel("macs", ("const", "gmacs"), "a + b GMACs",
                                                                      featurize, fit))
    archs = random_walks(24, 0, N0, max_steps=5)

    def law(a):
        return 0.3 + 40 * a.macs(64, 96) / 1e9

    train, held = [(a, law(a)) for a in archs[:16]], [("held-out walk", a, law(a)) for a in archs[16:]]
    chosen, loo = choose_model("auto", [a for a, _ in train], [m for _, m in train], SHAPE)
    assert chosen == "macs" and set(loo) == {"linear", "macs"}  # no conv table: kernels is not a candidate
    prof = finish_profile("auto", None, train, held, {"n": 0}, backend="openvino", precision="fp32",
                          input_shape=SHAPE, device="CPU:test", source="synthetic")
    assert prof["model"] == {"kind": "macs", "features": ["const", "gmacs"], "coef": pytest.approx([0.3, 40.0])}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    assert predict_latency(N0, path) == pytest.approx(law(N0))
    monkeypatch.undo()  # the entry is gone: its file is refused, naming the models there are
    with pytest.raises(ProfileError, match=r"model 'macs' over \['const', 'gmacs'\] is not one of this code's models: "
                                           r"linear over .*; kernels over"):
        load_profile(path)
