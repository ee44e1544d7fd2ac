"""LiteRT / OpenVINO edge exports, their accuracy reports and their latency runners (tiny models, generated images)."""

import json

import numpy as np
import pytest
from helpers import randomize_batchnorm

from lps_keras import build_model
from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
from lps_keras.export.common import ExportError
from lps_keras.export.edge import (
    artefact_path,
    export_edge,
    litert_predictor,
    openvino_predictor,
    write_network_savedmodel,
)
from lps_keras.export.edge_report import accuracy_report, calibration_images
from lps_keras.latency.edge import measure_edge_latency
from lps_keras.latency.stats import LatencyError
from lps_keras.recipe import recipe_from_dict
from lps_keras.reparam import reparameterize

H, W = 64, 96
ARCH = {"depth": [1, 1, 1, 1, 1], "width": [4, 8, 16, 32, 32], "resolution": [1, 0.5, 0]}


def _recipe(root, num_train=12, num_val=3, **export):
    return recipe_from_dict({
        "name": "edge", "model": {"arch": ARCH},
        "data": {"dataset": "synthetic", "root": str(root),
                 "synthetic": {"num_train": num_train, "num_val": num_val, "height": H, "width": W}},
        "export": {"input_size": [H, W], **export}})


def _deploy(recipe):
    model = build_model(recipe.arch())
    randomize_batchnorm(model)
    return reparameterize(model)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """All six artefacts of one tiny model, exported once for the module."""
    import keras

    keras.utils.set_random_seed(0)
    tmp = tmp_path_factory.mktemp("edge")
    recipe = _recipe(tmp / "data")
    deploy = _deploy(recipe)
    requests = [("litert", p) for p in ("fp32", "fp16", "int8")] + [("openvino", p) for p in ("fp32", "bf16", "int8")]
    lines = []
    reports = export_edge(recipe, deploy, tmp / "sm", 1, requests, calibration_count=10, log=lines.append)
    return {"recipe": recipe, "deploy": deploy, "dir": tmp / "sm", "reports": reports, "log": "\n".join(lines)}


def _normalised_images(n, seed=0):
    rng = np.random.default_rng(seed)
    u8 = rng.integers(0, 256, (n, H, W, 3)).astype(np.float32)
    return (u8 / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)


def test_files_sit_beside_the_version_with_a_report_each(exported):
    d = exported["dir"]
    for fmt, p in [("litert", "fp32"), ("litert", "fp16"), ("litert", "int8"),
                   ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]:
        path = artefact_path(d, 1, fmt, p)
        assert path.is_file(), path
        if fmt == "openvino":
            assert path.with_suffix(".bin").is_file()
        report = json.loads((d / f"{path.stem}_accuracy.json").read_text())
        assert report["precision"] == p and report["images"] == 3
        assert set(report) >= {"label_agreement", "miou", "miou_reference", "miou_change_points", "size_bytes"}
        assert f"{path.name}:" in exported["log"]  # printed too
    assert not [f for f in d.iterdir() if f.name.startswith(".")]  # no temporaries left


def test_fp32_artefacts_match_keras(exported, tmp_path):
    x = _normalised_images(2)
    for path in (artefact_path(exported["dir"], 1, "litert", "fp32"), artefact_path(exported["dir"], 1, "openvino",
                                                                                     "fp32")):
        predict = litert_predictor(path) if path.suffix == ".tflite" else openvino_predictor(path)
        for xi in x:
            ref = np.asarray(exported["deploy"](xi[None], training=False))
            got = predict(xi[None])
            assert got.dtype == np.float32 and got.shape == ref.shape
            np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    assert exported["reports"]["litert_fp32"]["label_agreement"] == 1.0
    assert exported["reports"]["openvino_fp32"]["miou_change_points"] == 0.0


def test_openvino_runs_at_the_stored_precision(exported):
    # This CPU's plugin defaults to bf16; the fp32 IR must not silently run in it.
    assert openvino_predictor(artefact_path(exported["dir"], 1, "openvino", "fp32")).hint == "f32"
    bf16 = openvino_predictor(artefact_path(exported["dir"], 1, "openvino", "bf16"))
    fp32 = openvino_predictor(artefact_path(exported["dir"], 1, "openvino", "fp32"))
    x = _normalised_images(1)
    scale = np.abs(fp32(x)).max()
    err = np.abs(bf16(x) - fp32(x)).max() / scale
    assert err < 0.05  # bf16 has 8 mantissa bits
    if bf16.hint == "bf16":  # a CPU without bf16 would fall back to f32
        assert err > 0


def test_int8_is_full_integer_with_float_io(exported):
    from ai_edge_litert.interpreter import Interpreter

    path = artefact_path(exported["dir"], 1, "litert", "int8")
    it = Interpreter(model_path=str(path))
    assert it.get_input_details()[0]["dtype"] == np.float32
    assert it.get_output_details()[0]["dtype"] == np.float32
    dtypes = [t["dtype"] for t in it.get_tensor_details()]
    assert dtypes.count(np.int8) > dtypes.count(np.float32), dtypes  # float only at the two ends
    ov_xml = artefact_path(exported["dir"], 1, "openvino", "int8").read_text()
    assert "FakeQuantize" in ov_xml or 'element_type="i8"' in ov_xml
    for key in ("litert_int8", "openvino_int8"):
        report = exported["reports"][key]
        assert report["calibration_images"] == 10
        assert 0.7 < report["label_agreement"] < 1.0  # quantisation moves some labels, not most
    assert (exported["reports"]["litert_int8"]["size_bytes"] < 0.5 * exported["reports"]["litert_fp32"]["size_bytes"])


def test_accuracy_report_against_hand_counted_fixture():
    # 2 classes on a 2x4 image; labels row 0 = class 0, row 1 = class 1, one ignored pixel.
    label = np.array([[0, 0, 0, 0], [1, 1, 1, 255]], np.uint8)
    ref = np.zeros((1, 2, 4, 2), np.float32)
    ref[0, 1, :, 1] = 1  # reference predicts the labels exactly
    edge = ref.copy()
    edge[0, 0, :2] = [0, 1]  # the artefact flips two class-0 pixels to class 1
    image = np.zeros((2, 4, 3), np.uint8)
    report = accuracy_report(lambda x: edge, [ref], [image], [label], num_classes=2)
    assert report["label_agreement"] == 6 / 8
    # edge: class 0 IoU = 2 / 4, class 1 IoU = 3 / 5 (2 false positives); reference: both 1.
    assert report["miou_reference"] == pytest.approx(100.0)
    assert report["miou"] == pytest.approx(100 * (2 / 4 + 3 / 5) / 2)
    assert report["miou_change_points"] == pytest.approx(100 * ((2 / 4 + 3 / 5) / 2 - 1))
    unlabelled = accuracy_report(lambda x: edge, [ref], [image], [None], num_classes=2)
    assert unlabelled["label_agreement"] == 6 / 8 and "miou" not in unlabelled


def test_calibration_images_are_normalised_training_images(tmp_path):
    from PIL import Image

    from lps_keras.data.pipeline import list_split

    recipe = _recipe(tmp_path / "data", num_train=12)
    calib = calibration_images(recipe, (H // 2, W // 2), count=4)
    assert calib.shape == (4, H // 2, W // 2, 3) and calib.dtype == np.float32
    files = list_split(recipe, "train")
    # evenly spread: images 0, 4, 7, 11 of 12
    last = np.asarray(Image.open(files.images[11]).convert("RGB").resize((W // 2, H // 2), Image.BILINEAR))
    expect = (last / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(calib[-1], expect, atol=1e-5)
    with pytest.raises(ExportError, match="needs 100 images .* found 12"):
        calibration_images(recipe, (H, W), count=100)


def test_latency_runners_time_the_artefacts(exported):
    for fmt, p in (("litert", "int8"), ("openvino", "int8")):
        path = artefact_path(exported["dir"], 1, fmt, p)
        stats = measure_edge_latency(path, warmup=1, iters=3, threads=1)
        assert stats.backend == fmt  # the backend table's entry runs the artefact
        assert stats.input_shape == (1, H, W, 3) and stats.precision == "int8" and stats.iterations == 3
        assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms
        with pytest.raises(LatencyError, match="exported for input"):
            measure_edge_latency(path, input_shape=(1, 2 * H, W, 3), warmup=0, iters=1)


def test_network_savedmodel_is_the_bare_network(tmp_path):
    import tensorflow as tf

    deploy = build_model(_recipe(tmp_path).arch(), deploy=True)
    write_network_savedmodel(deploy, tmp_path / "net", (H, W))
    loaded = tf.saved_model.load(str(tmp_path / "net"))
    x = _normalised_images(1)
    np.testing.assert_allclose(np.asarray(loaded.serve(x)), np.asarray(deploy(x)), atol=1e-5)


def test_cli_writes_edge_artefacts_and_refuses_bad_input(tmp_path, capsys):
    import export

    recipe = tmp_path / "r.json"
    recipe.write_text(_recipe(tmp_path / "data", num_train=12).to_json())
    out = tmp_path / "sm"
    base = ["--recipe", str(recipe), "--output", str(out), "--no-verify"]
    assert export.main(base + ["--litert", "int8", "--openvino", "fp32", "--calibration-images", "8"]) == 0
    text = capsys.readouterr().out
    assert "1_litert_int8.tflite:" in text and "1_openvino_fp32.xml:" in text
    assert (out / "1").is_dir() and (out / "1_litert_int8_accuracy.json").is_file()
    assert (out / "1_openvino_fp32.bin").is_file()
    # int8 with too few training images: one line naming the split, nothing written for version 2.
    assert export.main(base + ["--version", "2", "--litert", "int8"]) == 2
    err = capsys.readouterr().err
    assert "needs 100 images from data.train_split 'train'" in err and "Traceback" not in err
    assert not (out / "2").exists() and not (out / "2_litert_int8.tflite").exists()
    assert export.main(base + ["--version", "2", "--openvino", "fp32", "--edge-eval-images", "0"]) == 2
    assert "--edge-eval-images must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.parse_args(["--recipe", str(recipe), "--litert", "int4"])


def test_a_missing_package_is_named(monkeypatch):
    import importlib.util

    from lps_keras.export.common import BackendUnavailable
    from lps_keras.export.edge import require_edge

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    require_edge("openvino", "fp32")  # NNCF is only needed for int8
    with pytest.raises(BackendUnavailable, match="--openvino int8 needs the 'nncf' package: pip install nncf"):
        require_edge("openvino", "int8")


@pytest.mark.needs_shared_data
def test_camvid_int8_calibrates_on_100_real_images(shared_data, tmp_path):
    root = shared_data / "camvid_segnet"
    if not (root / "train").is_dir():
        pytest.skip(f"no CamVid copy at {root}")
    recipe = recipe_from_dict({"name": "camvid_edge", "model": {"arch": ARCH},
                               "data": {"dataset": "camvid", "root": str(root)},
                               "export": {"input_size": [90, 120]}})
    lines = []
    reports = export_edge(recipe, _deploy(recipe), tmp_path / "sm", 1, [("litert", "int8"), ("openvino", "int8")],
                          calibration_count=100, eval_images=3, log=lines.append)
    for report in reports.values():
        assert report["calibration_images"] == 100
        assert report["images"] == 3 and "camvid split 'val'" in report["images_description"]
        assert "miou_change_points" in report
    assert "100 images of camvid split 'train'" in "\n".join(lines)
