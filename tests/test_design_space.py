"""The paper's design space: block types (Table 2) and path interactions (Table 3) as Arch fields."""

import json

import keras
import numpy as np
import pytest
from helpers import randomize_batchnorm

from lps_keras.arch import Arch, ArchError
from lps_keras.block_specs import BLOCK_TYPES, INTERACTION_TYPES
from lps_keras.blocks import BLOCK_LAYERS
from lps_keras.model import build_model
from lps_keras.reparam import reparameterize

DEPTH, WIDTH = (1, 2, 1, 1, 1), (4, 8, 8, 16, 16)

# Deploy parameters (conv + bias per unit) of one block, counted by hand from the module docstring
# of lps_keras.blocks: (4 -> 8, stride 2) and (8 -> 8, stride 1).
HAND = {
    "conv3x3": (9 * 4 * 8 + 8, 9 * 8 * 8 + 8),
    # 3x3, 3x3, 1x1 projection | 3x3, 3x3 (identity shortcut)
    "residual": (9 * 4 * 8 + 8 + 9 * 8 * 8 + 8 + 4 * 8 + 8, 2 * (9 * 8 * 8 + 8)),
    # 1x1 to 2, 3x3 2->2, 1x1 2->8, projection | without projection
    "bottleneck": (4 * 2 + 2 + 9 * 2 * 2 + 2 + 2 * 8 + 8 + 4 * 8 + 8, 8 * 2 + 2 + 9 * 2 * 2 + 2 + 2 * 8 + 8),
    # depthwise 3x3 + pointwise
    "sepconv3x3": (9 * 4 + 4 + 4 * 8 + 8, 9 * 8 + 8 + 8 * 8 + 8),
    # expand x6, depthwise, project
    "inverted_residual": (4 * 24 + 24 + 9 * 24 + 24 + 24 * 8 + 8, 8 * 48 + 48 + 9 * 48 + 48 + 48 * 8 + 8),
    # primary 3x3 to 4, cheap depthwise on 4
    "ghost": (9 * 4 * 4 + 4 + 9 * 4 + 4, 9 * 8 * 4 + 4 + 9 * 4 + 4),
    # left dw + pw, right pw + dw + pw (halves of 4) | split: right pw + dw + pw on 4 channels
    "shufflenet_unit": (9 * 4 + 4 + 4 * 4 + 4 + 4 * 4 + 4 + 9 * 4 + 4 + 4 * 4 + 4, 4 * 4 + 4 + 9 * 4 + 4 + 4 * 4 + 4),
}


def test_default_arch_unchanged_in_dict_and_hash():
    a = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0))
    assert "block" not in a.to_dict() and "interaction" not in a.to_dict()
    assert a.hash == "7fe129aefe1f"  # the pinned hash from before the fields existed
    b = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0), block="ghost", interaction="none")
    assert b.to_dict()["block"] == "ghost" and b.to_dict()["interaction"] == "none"
    assert b.hash != a.hash and Arch.from_dict(json.loads(b.to_json())) == b
    assert "block=ghost" in str(b) and "interaction none" in b.differences(a).replace("=", " ")


@pytest.mark.parametrize("field, value", [("block", "conv5x5"), ("interaction", "bilateral_c"), ("block", 3)])
def test_bad_names_refused_one_line(field, value):
    with pytest.raises(ArchError) as e:
        Arch(DEPTH, WIDTH, (1, 0, 0), **{field: value})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(field) and repr(value) in msg
    with pytest.raises(ArchError, match=field):
        Arch.from_dict({"depth": DEPTH, "width": WIDTH, "resolution": [1], field: value})


def test_shufflenet_needs_even_widths():
    with pytest.raises(ArchError, match=r"width\[0\] must be even.*5"):
        Arch(DEPTH, (5, 8, 8, 16, 16), (1, 0, 0), block="shufflenet_unit")


def test_expand_keeps_choices():
    from lps_keras.arch import EXPANSION_OPS

    a = Arch(DEPTH, WIDTH, (1, 0, 0), block="residual", interaction="direct_a")
    b = a + EXPANSION_OPS[0]
    assert (b.block, b.interaction) == ("residual", "direct_a")


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_block_shapes_and_hand_counts(block):
    down, same = HAND[block]
    for (cin, stride), expected in (((4, 2), down), ((8, 1), same)):
        layer = BLOCK_LAYERS[block](8, strides=stride, deploy=True, name="b")
        y = layer(np.zeros((1, 9, 10, cin), "float32"))
        assert tuple(y.shape) == ((1, 5, 5, 8) if stride == 2 else (1, 9, 10, 8))
        assert layer.count_params() == expected, (block, stride)


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_block_network_fused_parity_and_counts(block):
    arch = Arch(DEPTH, WIDTH, (1, 0.5, 0), num_classes=3, block=block, interaction="none")
    model = build_model(arch)
    randomize_batchnorm(model, seed=4)
    deploy = reparameterize(model)
    x = np.random.default_rng(0).normal(size=(1, 40, 56, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), np.float64)
    got = np.asarray(deploy(x), np.float64)
    assert ref.shape == (1, 3, 4, 3)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-4
    assert deploy.count_params() == arch.num_params()


def _pairs(interaction):
    return {"none": 0, "bilateral_b": 0, "direct_a": 1, "direct_b": 1, "attention_a": 1,
            "attention_b": 2, "bilateral_a": 2}[interaction]


@pytest.mark.parametrize("interaction", INTERACTION_TYPES)
def test_interaction_shapes_counts_and_fused_parity(interaction):
    arch = Arch((1, 1, 1, 1, 1), WIDTH, (1, 0.5, 0), num_classes=3, interaction=interaction)
    base = Arch((1, 1, 1, 1, 1), WIDTH, (1, 0.5, 0), num_classes=3, interaction="none")
    # One 1x1 conv + bias per (receiver, sender) pair after stage 3 (8 channels) and stage 4 (16).
    assert arch.num_params() - base.num_params() == _pairs(interaction) * (8 * 8 + 8 + 16 * 16 + 16)
    model = build_model(arch)
    has_layer = interaction != "none"
    assert any(layer.name == "interaction_stage3" for layer in model.layers) == has_layer
    randomize_batchnorm(model, seed=5)
    deploy = reparameterize(model)
    x = np.random.default_rng(1).normal(size=(1, 40, 56, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), np.float64)
    got = np.asarray(deploy(x), np.float64)
    assert ref.shape == (1, 3, 4, 3)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-4
    assert deploy.count_params() == arch.num_params()


def test_macs_match_keras_layer_shapes():
    """Analytic MACs against the kernels of the built model at a traced size."""
    from lps_keras.summary import count_macs

    for block in BLOCK_TYPES:
        arch = Arch(DEPTH, WIDTH, (1, 0.5, 0), num_classes=3, block=block, interaction="attention_b")
        deploy = build_model(arch, deploy=True)
        assert count_macs(deploy, (40, 56)) == arch.macs(40, 56), block


def test_saved_model_file_round_trip(tmp_path):
    arch = Arch(DEPTH, WIDTH, (1, 0.5, 0), num_classes=3, block="ghost", interaction="bilateral_a")
    model = build_model(arch)
    randomize_batchnorm(model, seed=6)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert again.arch == arch
    x = np.random.default_rng(2).normal(size=(1, 32, 48, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)), atol=1e-5)


@pytest.mark.parametrize("block, interaction", [("sepconv3x3", "direct_b"), ("conv3x3", "attention_a")])
def test_training_params_match_keras(block, interaction):
    from lps_keras.summary import training_num_params

    arch = Arch(DEPTH, WIDTH, (1, 0.5, 0), num_classes=3, block=block, interaction=interaction)
    model = build_model(arch)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    counted = training_num_params(arch)
    assert counted["trainable"] == trainable and counted["total"] == model.count_params()


def test_export_savedmodel_and_onnx_non_default(tmp_path):
    """A non-default block (with split, gather and concat) and interaction (with a sigmoid gate) export."""
    from lps_keras import export as ex

    arch = Arch((1, 1, 1, 1, 1), WIDTH, (1, 0.5, 0), num_classes=3, block="shufflenet_unit",
                interaction="attention_b")
    train = build_model(arch)
    randomize_batchnorm(train, seed=7)
    deploy = reparameterize(train)
    result = ex.export_savedmodel(deploy, tmp_path / "sm", 1, reference_model=train,
                                  verify_image=ex.sample_image(48, 96))
    assert (result.path / "saved_model.pb").is_file()
    report = ex.export_onnx(deploy, tmp_path / "m.onnx", opset=17, input_shape=(1, 48, 96, 3))
    assert report["onnxruntime_max_rel_error"] <= 1e-4
