import keras
import numpy as np
import pytest
from helpers import randomize_batchnorm

from lps_keras.arch import Arch
from lps_keras.model import LPSNet, build_model
from lps_keras.weights import is_deploy, load_weights_file, prepare_deploy_model

ARCH = Arch((1, 1, 2, 1, 1), (4, 8, 8, 16, 16), (0.75, 0.25, 0), num_classes=5)


def test_saved_model_carries_its_arch(tmp_path):
    model = build_model(ARCH, deploy=True)
    model.save(tmp_path / "m.keras")
    loaded = load_weights_file(tmp_path / "m.keras", Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,), 5))
    assert isinstance(loaded, LPSNet) and loaded.arch == ARCH and is_deploy(loaded)


def test_a_mixed_bfloat16_model_loads_computing_in_float32(tmp_path):
    """A model saved by a mixed_bfloat16 training run loads computing in float32 (its exports are fp32 and are
    verified against it): the same weights as a float32 model of the arch give the same outputs."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_model(ARCH, deploy=True)
        randomize_batchnorm(mixed, seed=3)
        mixed.save(tmp_path / "mixed.keras")
    finally:
        keras.config.set_dtype_policy(previous)
    loaded = load_weights_file(tmp_path / "mixed.keras", ARCH)
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    reference = build_model(ARCH, deploy=True)
    reference.set_weights(mixed.get_weights())
    x = np.random.default_rng(1).normal(size=(1, 48, 64, 3)).astype("float32")
    out = np.asarray(loaded(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(reference(x)), rtol=1e-6, atol=1e-6)


def test_plain_functional_keras_file_still_loads(tmp_path):
    # .keras files written before models carried their Arch hold a plain functional graph.
    model = build_model(ARCH)
    randomize_batchnorm(model, seed=2)
    keras.Model(model.inputs, model.outputs, name="old").save(tmp_path / "old.keras")
    x = np.random.default_rng(0).normal(size=(1, 48, 64, 3)).astype("float32")
    loaded = load_weights_file(tmp_path / "old.keras", ARCH)
    assert isinstance(loaded, LPSNet) and loaded.arch == ARCH and not is_deploy(loaded)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    _, deploy = prepare_deploy_model(ARCH, tmp_path / "old.keras")
    np.testing.assert_allclose(np.asarray(deploy(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        load_weights_file(tmp_path / "old.keras", Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,), 5))
