"""The model-family table: complete entries, recipes that select a family, LPS-only features refused
for other families, the shared ConvBN fold against a numpy reference, and every family through
train -> export -> evaluate on the synthetic set."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lps_keras.families import (
    FAMILIES,
    FamilyError,
    build,
    config_of,
    family_of_config,
    family_of_preset,
    fuse,
    get_family,
)
from lps_keras.recipe import RecipeError, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
TINY = {  # the smallest configs of each family that still have every layer kind
    "ndnet": {"channels": [8, 8, 16], "depths": [1, 1, 1], "expansion": 2, "stem_channels": 8, "head_channels": 8},
    "mrms": {"width_multiplier": 0.25, "head_channels": 16},
}


def test_every_entry_is_complete_and_presets_summarise():
    assert set(FAMILIES) == {"lps", "ndnet", "mrms"}
    names = []
    for name, family in FAMILIES.items():
        assert family.name == name and family.description and family.presets
        for preset in family.presets:
            config = family.config(preset=preset, num_classes=11)
            assert config.num_classes == 11
            assert family.config_type.from_dict(config.to_dict()) == config  # round trip
            s = family.summary(config, (360, 480))
            assert set(s) >= {"params", "params_deploy", "macs", "output_stride"}
            assert s["params"] >= s["params_deploy"] > 0 and s["macs"] > 0 and s["output_stride"] >= 8
            assert family_of_preset(preset) is family and family_of_config(config) is family
            names.append(preset)
    assert len(names) == len(set(names))


def test_unknown_family_preset_and_lps_only_features_are_refused():
    with pytest.raises(FamilyError, match=r"unknown model family 'segformer'"):
        get_family("segformer")
    with pytest.raises(FamilyError, match=r"unknown preset 'ndnet99'"):
        family_of_preset("ndnet99")
    with pytest.raises(FamilyError, match=r"mrms.*no published-weights format"):
        get_family("mrms").load_published_weights(None, "x.pth")


def test_lps_only_tools_refuse_another_family_before_doing_anything(tmp_path):
    from lps_keras.reparam import reparameterize
    from lps_keras.search.expansion import run

    r = recipe_from_dict({"model": {"family": "ndnet", "config": TINY["ndnet"]}, "data": {"dataset": "camvid"}})
    with pytest.raises(RecipeError, match=r"model.family: 'ndnet'.*LPS-Net only"):
        run(r, tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()  # no executor started, no directory made
    with pytest.raises(TypeError, match=r"'ndnet' family model: re-parameterisation of RepVGG branches is LPS-Net"):
        reparameterize(build(r.model_config()))


@pytest.mark.parametrize("family", ["ndnet", "mrms"])
def test_sync_batchnorm_reaches_every_bn_and_survives_a_config_round_trip(family):
    from lps_keras.families.layers import ConvBN

    def bns(model):
        return [layer.bn for layer in model.layers if isinstance(layer, ConvBN)]

    config = get_family(family).config(config=TINY[family], num_classes=3)
    model = build(config, sync_batchnorm=True)
    assert bns(model) and all(bn.synchronized for bn in bns(model))
    assert not any(bn.synchronized for bn in bns(build(config)))
    again = type(model).from_config(model.get_config())
    assert again.sync_batchnorm and all(bn.synchronized for bn in bns(again))
    assert all(bn is None for bn in bns(fuse(model)))  # the deploy form has no BN


def test_recipes_select_a_family_and_name_the_bad_field():
    r = recipe_from_dict({"model": {"family": "ndnet", "preset": "ndnet45"}, "data": {"dataset": "camvid"}})
    config = r.model_config()
    assert r.family().name == "ndnet" and config.num_classes == 11 and config.depths == (4, 12, 6)
    with pytest.raises(RecipeError, match=r"model.family: 'ndnet'; this needs an LPS-Net architecture"):
        r.arch()
    r = recipe_from_dict({"model": {"family": "mrms", "config": TINY["mrms"], "num_classes": 5}})
    assert r.model_config().head_channels == 16 and r.model_config().num_classes == 5
    bad = [
        ({"preset": "ndnet45"}, r"'ndnet45' is a preset of family 'ndnet'; set model.family to 'ndnet'"),
        ({"family": "ndnet", "arch": {"depth": [1] * 5}}, r"model.arch: an LPS-Net architecture, but model.family"),
        ({"config": {"channels": [8, 8, 8]}}, r"model.config: LPS-Net's explicit architecture is model.arch"),
        ({"family": "mrms"}, r"exactly one of model.preset and model.arch \(LPS-Net\) or model.config"),
        ({"family": "mrms", "config": {"width": 1}}, r"model.config: .*unknown key\(s\) \['width'\]"),
        ({"family": "ndnet", "config": {"expansion": 3}}, r"model.config.expansion must be one of \[2, 4\], got 3"),
        ({"family": "mrms", "config": {"blocks": ["x"]}}, r"model.config.blocks must have 17 entries"),
        ({"arch": {"depth": [1, 1], "width": [4] * 5, "resolution": [1]}}, r"model.arch.depth must have 5 entries"),
        ({"family": "ndnet", "preset": "nope"}, r"model.preset: unknown preset 'nope'"),
        ({"family": "vit", "preset": "x"}, r"model.family: 'vit' is not one of lps, ndnet, mrms"),
    ]
    for model, message in bad:
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict({"model": model})


def test_conv_bn_fold_matches_a_numpy_reference():
    """ConvBN's deploy kernel and bias equal a hand fold of the BN, for a dense and a depthwise conv."""
    import keras

    from lps_keras.families.layers import ConvBN

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 9, 9, 4)).astype("float32")
    for depthwise in (False, True):
        layer = ConvBN(6, 3, strides=2, depthwise=depthwise, activation=None)
        layer.build(x.shape)
        c = 4 if depthwise else 6
        gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
        mean, var = rng.normal(size=c), rng.uniform(0.5, 2, c)
        layer.bn.set_weights([w.astype("float32") for w in (gamma, beta, mean, var)])
        kernel, bias = layer.fused_kernel_bias()
        raw = np.asarray(layer.conv.kernel, np.float64)
        scale = gamma / np.sqrt(var + 1e-5)
        want = raw * (scale[None, None, :, None] if depthwise else scale)
        np.testing.assert_allclose(kernel, want, rtol=1e-6)  # the BN holds float32 copies
        np.testing.assert_allclose(bias, beta - mean * scale, rtol=1e-6, atol=1e-7)
        y = np.asarray(layer(x, training=False))
        # PyTorch's padding=1 on every side, stride 2: a 9x9 input gives 5x5 (Keras "same" would too,
        # but sample from (0, 0) with one-sided padding; the symmetric pad samples from (-1, -1)).
        assert y.shape[1:3] == (5, 5)
        xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
        patch = xp[0, 0:3, 0:3, :]  # output (0, 0)
        if depthwise:
            ref = np.einsum("hwc,hwc->c", patch, raw[..., 0])
        else:
            ref = np.einsum("hwc,hwco->o", patch, raw)
        np.testing.assert_allclose(y[0, 0, 0], (ref - mean) * scale + beta, rtol=1e-4, atol=1e-5)
        assert keras.layers.deserialize(keras.layers.serialize(layer)).get_config() == layer.get_config()


@pytest.mark.parametrize("name", ["ndnet", "mrms"])
def test_build_fuse_and_config_of_through_the_table(name):
    from helpers import randomize_batchnorm

    family = get_family(name)
    config = family.config(config=TINY[name], num_classes=4)
    model = build(config, input_shape=(None, None, 3))
    assert model.family == name and config_of(model) == config and not model.deploy
    randomize_batchnorm(model)
    x = np.random.default_rng(1).normal(size=(1, 40, 56, 3)).astype("float32")
    fused = fuse(model)
    assert fused.deploy and fuse(fused) is fused
    ref = np.asarray(model(x, training=False), np.float64)
    out = np.asarray(fused(x, training=False), np.float64)
    assert np.max(np.abs(ref - out)) / np.max(np.abs(ref)) < 1e-5
    assert fused.count_params() == family.summary(config, (40, 56))["params_deploy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ndnet", "mrms"])
def test_every_family_trains_exports_and_evaluates(tmp_path, name):
    """train.py's loop, export (SavedModel verified in a fresh process) and evaluate on the synthetic set."""
    from lps_keras.evaluation import evaluate
    from lps_keras.export import ExportOptions, export_recipe
    from lps_keras.train import train

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    raw = json.loads((REPO / "recipes" / "demo.json").read_text())
    raw["model"] = {"family": name, "config": TINY[name]}
    raw["name"] = f"tiny_{name}"
    recipe = recipe_from_dict(raw, overrides=[
        f"data.root={tmp_path / 'data'}", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
        "data.synthetic.height=64", "data.synthetic.width=96", "data.augment.crop_size=[64,64]",
        "train.iterations=4", "train.val_interval=2", "train.checkpoint_interval=2", "train.batch_size=2",
        "train.image_summaries=0", "eval.batch_size=2", f"train.run_dir={tmp_path / 'run'}",
        "export.input_size=[64,96]",
    ])
    out = train(recipe, verbose=0)
    run = Path(out["run_dir"])
    assert out["family"] == name and out["final_step"] == 4 and out["deploy_parity_max_rel_error"] < 1e-4
    assert json.loads((run / "backup" / "arch.json").read_text())["family"] == name
    if name == "ndnet":  # the resume path is the family-independent TrainingRun: checked once
        # A rerun resumes (nothing left to do) and a rerun with another config is refused by name.
        assert train(recipe, verbose=0)["resumed_from_step"] == 4
        other = recipe_from_dict({**raw, "model": {"family": name, "config": {**TINY[name], "head_channels": 24}}},
                                 overrides=[f"train.run_dir={tmp_path / 'run'}"])
        from lps_keras.train import TrainingError

        with pytest.raises(TrainingError, match=r"holds a backup of architecture .*head_channels"):
            train(other, verbose=0)

    written = export_recipe(recipe, ExportOptions(weights=str(run / "last.keras"), output=str(tmp_path / "sm")),
                            log=lambda m: None, warn=lambda m: None)
    assert written["verification"]["serving_default"]["label_agreement"] > 0.999
    result = evaluate(recipe, str(tmp_path / "sm" / "1"), progress=False)
    assert result["miou"] == pytest.approx(out["miou"], abs=0.02)  # the training run's own final validation


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ndnet", "mrms"])
def test_every_cpu_latency_backend_times_every_family(name):
    """tf, tf_session, onnxruntime, openvino and litert (each converting the family's fused network as it
    would for a deployment) and the macs count, on a tiny config."""
    from lps_keras.latency import measure_latency

    config = get_family(name).config(config=TINY[name], num_classes=3)
    for backend in ("tf", "tf_session", "onnxruntime", "openvino", "litert", "macs"):
        if backend in ("openvino", "litert"):
            pytest.importorskip({"openvino": "openvino", "litert": "ai_edge_litert"}[backend])
        stats = measure_latency(config, backend, (1, 64, 96, 3), warmup=0, iters=2)
        assert stats.backend == backend and stats.median_ms > 0 and stats.iterations in (1, 2), backend


@pytest.mark.parametrize("name", ["ndnet", "mrms"])
def test_every_family_exports_to_onnx_and_matches_onnxruntime(tmp_path, name):
    """The ONNX path (what onnxruntime, OpenVINO and TensorRT time) for each family's fused network."""
    from helpers import randomize_batchnorm

    from lps_keras.export import export_onnx

    model = build(get_family(name).config(config=TINY[name], num_classes=4), input_shape=(64, 96, 3))
    randomize_batchnorm(model)
    report = export_onnx(fuse(model), tmp_path / "m.onnx", opset=17, input_shape=(1, 64, 96, 3))
    assert report["onnxruntime_max_rel_error"] <= 1e-4
