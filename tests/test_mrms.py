"""MRMS / TinyMRMS: paper budgets, summary vs the built model, config contract, saving, fusion."""

import keras
import numpy as np
import pytest

from lps_keras.families.family import FamilyError
from lps_keras.families.layers import ConvBN
from lps_keras.families.mrms import FAMILY, PRESETS, MRMSConfig, summary
from lps_keras.families.mrms.config import layer_plan
from lps_keras.families.mrms.model import MRMS, build_mrms, fuse_mrms

# Paper (Cityscapes, 768x1536, 19 classes): params, GFLOPs (read as G multiply-accumulates).
PAPER = {"mrms": (2.1e6, 7.3e9), "tinymrms": (0.6e6, 2.8e9)}
SMALL = MRMSConfig(width_multiplier=0.5, head_channels=16, lge_reduction=2, num_classes=5)
SIZE = (64, 96)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def keras_macs(model):
    """Conv MACs of a model built at a static input size, read off its layers."""
    macs = 0
    for layer in model.layers:
        conv = layer.conv if isinstance(layer, ConvBN) else layer
        if isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            _, h, w, _ = layer.output.shape
            macs += int(np.prod(conv.kernel.shape)) * h * w
    return macs


def randomize(model, seed=0):
    """Random BN statistics and affine parameters (fresh BNs are the identity and hide a bad fold)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, ConvBN) and layer.bn is not None:
            bn, c = layer.bn, layer.bn.moving_mean.shape[0]
            bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            bn.beta.assign(rng.normal(0.0, 0.2, c).astype("float32"))
            bn.moving_mean.assign(rng.normal(0.0, 0.2, c).astype("float32"))
            bn.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))


@pytest.mark.parametrize("preset", ["mrms", "tinymrms"])
def test_paper_budget(preset):
    params, macs = PAPER[preset]
    s = summary(FAMILY.config(preset), (768, 1536))
    assert abs(s["params"] / params - 1) <= 0.10, s
    assert abs(s["macs"] / macs - 1) <= 0.10, s
    assert s["output_stride"] == 8


@pytest.mark.parametrize("preset", ["mrms", "tinymrms"])
def test_summary_matches_built_model(preset):
    config = FAMILY.config(preset)
    s = summary(config, SIZE)
    model = build_mrms(config, input_shape=(*SIZE, 3))
    assert trainable_count(model) == s["params"]
    assert keras_macs(model) == s["macs"]
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert weighted == {conv.name for conv in layer_plan(config)}
    deploy = build_mrms(config, deploy=True, input_shape=(*SIZE, 3))
    assert deploy.count_params() == s["params_deploy"]


def test_summary_without_lge_and_odd_size():
    config = MRMSConfig(width_multiplier=0.5, head_channels=16, lge=False, num_classes=3)
    size = (37, 53)  # not divisible by 32: every stride-2 conv rounds up
    model = build_mrms(config, input_shape=(*size, 3))
    s = summary(config, size)
    assert keras_macs(model) == s["macs"]
    assert trainable_count(model) == s["params"]
    assert model.output.shape[1:3] == (5, 7)
    assert not any(layer.name.startswith("lge_") for layer in model.layers)


def test_config_contract():
    for name, preset in PRESETS.items():
        assert "num_classes" not in preset, name
        config = FAMILY.config(name, num_classes=7)
        assert MRMSConfig.from_dict(config.to_dict()) == config
    with pytest.raises(FamilyError, match="unknown key.*'depth'"):
        MRMSConfig.from_dict({"depth": 3})
    bad = [("width_multiplier", 0.0), ("width_multiplier", "1"), ("head_channels", 4), ("head_channels", True),
           ("lge", 1), ("lge_reduction", 0), ("num_classes", 1)]
    for field, value in bad:
        with pytest.raises(FamilyError, match=f"{field}.*{value!r}".replace("(", r"\(")):
            MRMSConfig.from_dict({field: value})
    with pytest.raises(FamilyError, match="unknown preset"):
        FAMILY.config("mrms_xl")


def test_output_shapes():
    model = build_mrms(SMALL)  # any input size
    x = np.zeros((2, 64, 96, 3), "float32")
    assert tuple(model(x).shape) == (2, 8, 12, 5)
    up = build_mrms(SMALL, upsample_logits=True)
    assert tuple(up(np.zeros((1, 70, 90, 3), "float32")).shape) == (1, 70, 90, 5)
    assert tuple(up(x).shape) == (2, 64, 96, 5)


def test_save_and_load_round_trip(tmp_path):
    model = build_mrms(SMALL, upsample_logits=True, input_shape=(*SIZE, 3))
    randomize(model)
    assert model.family == "mrms" and model.family_config == SMALL
    config = model.get_config()
    assert config["config"] == SMALL.to_dict() and config["upsample_logits"] is True
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, MRMS) and loaded.family_config == SMALL and loaded.upsample_logits
    x = np.random.default_rng(1).normal(size=(1, *SIZE, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-6, atol=1e-6)


def test_fused_parity():
    model = build_mrms(SMALL, input_shape=(*SIZE, 3))
    randomize(model)
    fused = fuse_mrms(model)
    assert fused.deploy and not any(isinstance(w, keras.layers.BatchNormalization) for w in fused.layers)
    assert FAMILY.fuse(model).count_params() == summary(SMALL, SIZE)["params_deploy"]
    x = np.random.default_rng(2).normal(size=(2, *SIZE, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), dtype=np.float64)
    out = np.asarray(fused(x), dtype=np.float64)
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) <= 1e-5


def test_family_build_through_table():
    model = FAMILY.build(SMALL, name="tiny")
    assert model.name == "tiny" and isinstance(model, MRMS)
    with pytest.raises(TypeError, match="MRMSConfig"):
        build_mrms(SMALL.to_dict())


def test_a_searched_network_fuses_exports_and_is_timed_like_any_other(tmp_path):
    """What search.py derives (identity blocks, other kernels and expansions, resized branches) is a plain MRMS:
    the summary counts it, it fuses, exports to ONNX and goes through the latency tools."""
    from lps_keras.export import export_onnx
    from lps_keras.families import fuse
    from lps_keras.families.mrms.config import block_slots
    from lps_keras.latency import measure_latency
    from lps_keras.latency.runners import random_deploy_model

    ops = [(1, 5), (3, 7), (6, 5), (6, 7), (3, 5), (1, 7), (6, 3)]
    skipped = {2, 5, 8, 12, 15}  # stage2_block2, stage3_block3, stage4_block3, stage4_block7, stage5_block3
    slots = block_slots(0.25)
    assert all(slots[i].residual for i in skipped)
    blocks = ["identity" if i in skipped else {"expansion": ops[i % len(ops)][0], "kernel": ops[i % len(ops)][1]}
              for i in range(len(slots))]
    config = MRMSConfig(width_multiplier=0.25, head_channels=16, lge_reduction=2, num_classes=5, blocks=blocks,
                        branch_ratios=[0.6, 0.4, 0.6])
    size = (64, 64)
    model = build_mrms(config, input_shape=(*size, 3))
    names = {layer.name for layer in model.layers}
    assert {"stage3_block1_resize", "stage4_block1_resize", "stage5_block1_resize"} <= names
    assert not any(n.startswith(tuple(slots[i].prefix + "_" for i in skipped)) for n in names)
    s = summary(config, size)
    assert trainable_count(model) == s["params"] and keras_macs(model) == s["macs"]

    randomize(model)
    fused = fuse(model)
    assert fused.deploy and fused.count_params() == s["params_deploy"]
    x = np.random.default_rng(3).normal(size=(1, *size, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), np.float64)
    assert np.max(np.abs(np.asarray(fused(x), np.float64) - ref)) / np.max(np.abs(ref)) <= 1e-5

    report = export_onnx(fused, tmp_path / "m.onnx", opset=17, input_shape=(1, *size, 3))
    assert report["onnxruntime_max_rel_error"] <= 1e-4  # the ONNX file onnxruntime, OpenVINO and TensorRT time
    timed = random_deploy_model(config)  # what every timed backend builds from a config
    assert [layer.name for layer in timed.layers] == [layer.name for layer in fused.layers]
    stats = measure_latency(config, "macs", (1, *size, 3))
    assert stats.median_ms == pytest.approx(s["macs"] / 1e9)
