import keras
import numpy as np
import pytest
from helpers import randomize_batchnorm

from lps_keras.arch import Arch
from lps_keras.layers import RepConvBlock
from lps_keras.model import build_model
from lps_keras.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", ["lps_tiny", "lps_s", "lps_m", "lps_l", "table4_step09", "table4_step14"])
def test_deploy_params_equal_official(name):
    expected = {"lps_tiny": 16_091, "lps_s": 3_371_075, "lps_m": 3_371_075, "lps_l": 9_152_291,
                "table4_step09": 5_961_059, "table4_step14": 17_994_515}[name]
    assert build_model(PRESETS[name], deploy=True).count_params() == expected


@pytest.mark.parametrize("name, shape", [("lps_s", (48, 96)), ("lps_m", (64, 128)), ("lps_l", (64, 128)),
                                         ("lps_tiny", (32, 64))])
def test_output_shapes_at_1024x2048(name, shape):
    model = build_model(get_preset(name), input_shape=(1024, 2048, 3))
    assert model.output_shape == (None, *shape, 19)
    up = build_model(get_preset(name), upsample_logits=True, input_shape=(1024, 2048, 3))
    assert up.output_shape == (None, 1024, 2048, 19)


def test_first_path_of_s_runs_at_three_quarters():
    model = build_model(get_preset("lps_s"), input_shape=(1024, 2048, 3))
    assert model.get_layer("path1_resize").output.shape[1:3] == (768, 1536)
    assert model.get_layer("path2_resize").output.shape[1:3] == (256, 512)
    assert model.get_layer("path1_stage1_block1").output.shape[1:3] == (384, 768)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_with_deterministic_names(name):
    arch = PRESETS[name]
    model = build_model(arch, deploy=True)
    names = [layer.name for layer in model.layers]
    blocks = [n for n in names if n.startswith("path") and "_block" in n]
    assert len(blocks) == sum(arch.depth) * arch.num_paths
    assert "path1_stage5_block1" in names and "head" in names
    assert ("interaction_stage3" in names) == (arch.num_paths > 1)
    assert model.arch == arch
    assert model.count_params() == arch.num_params()


def test_any_input_size_and_three_paths():
    arch = Arch((1, 2, 1, 1, 1), (4, 8, 8, 16, 16), (1, 0.5, 0.25), num_classes=3)
    model = build_model(arch)
    for h, w in [(64, 64), (37, 53)]:
        out = model(np.zeros((1, h, w, 3), "float32"))
        assert out.shape == (1, *arch.output_size(h, w), 3)


@pytest.mark.parametrize("deploy", [False, True])
def test_keras_save_load_round_trip(tmp_path, deploy):
    arch = Arch((1, 1, 2, 1, 1), (4, 8, 8, 16, 16), (0.75, 0.25, 0), num_classes=5)
    model = build_model(arch, deploy=deploy)
    randomize_batchnorm(model, seed=1)
    x = np.random.default_rng(0).normal(size=(1, 48, 64, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6, atol=1e-6)
    assert all(isinstance(layer, RepConvBlock) and layer.deploy == deploy
               for layer in loaded.layers if "_block" in layer.name)


def test_rejects_non_arch():
    with pytest.raises(TypeError, match="Arch"):
        build_model({"depth": [1] * 5})
