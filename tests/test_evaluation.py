"""Evaluation: training vs deploy .keras give the same mIoU, SavedModel input mapping, prediction PNGs."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # see train.py

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from lps_keras.recipe import load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 19


@pytest.fixture
def stub_data(monkeypatch):
    """In-memory val set: 5 images 32x48 whose labels are readable from the pixels, some ignored."""
    import tensorflow as tf

    import lps_keras.data
    from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 32, 48, 3)).astype(np.uint8)
    images = ((u8 / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype("float32")
    labels = (u8[..., 0].astype(np.int32) * NUM_CLASSES // 256).astype(np.int32)
    labels[:, :3] = 255

    def build_dataset(recipe, split, training, batch_size=None):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size or 1)

    monkeypatch.setattr(lps_keras.data, "build_dataset", build_dataset, raising=False)
    return u8, labels


@pytest.fixture
def models(tmp_path):
    from helpers import randomize_batchnorm

    from lps_keras.model import build_model
    from lps_keras.reparam import reparameterize

    recipe = load_recipe(REPO / "recipes" / "demo.json", ["eval.batch_size=2"])
    model = build_model(recipe.arch())
    randomize_batchnorm(model, seed=1)  # fresh BNs are the identity and would hide a wrong fold
    deploy = reparameterize(model)
    model.save(tmp_path / "train.keras")
    deploy.save(tmp_path / "deploy.keras")
    return recipe, model, deploy


def test_training_and_deploy_keras_give_same_miou(tmp_path, stub_data, models):
    from lps_keras.data import denormalize
    from lps_keras.evaluation import evaluate
    from lps_keras.metrics import ConfusionMatrix

    recipe, model, _ = models
    a = evaluate(recipe, tmp_path / "train.keras", progress=False)
    b = evaluate(recipe, tmp_path / "deploy.keras", progress=False)
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-3)
    assert a["num_pixels"] == 5 * 29 * 48  # ignored rows excluded
    # Independent reference: numpy argmax of the upsampled logits of the in-memory model.
    u8, labels = stub_data
    from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
    from lps_keras.layers import resize_bilinear

    x = ((u8 / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype("float32")
    logits = resize_bilinear(model(x, training=False), (32, 48))
    cm = ConfusionMatrix(NUM_CLASSES).update(labels, np.argmax(np.asarray(logits), -1))
    assert a["miou"] == pytest.approx(cm.result().miou, abs=1e-6)
    assert np.array_equal(denormalize(x), u8)


def test_save_predictions_writes_official_pngs(tmp_path, stub_data, models):
    from lps_keras.data.cityscapes import EVAL_LABEL_IDS
    from lps_keras.evaluation import evaluate

    recipe, _, _ = models
    out = tmp_path / "preds"
    result = evaluate(recipe, tmp_path / "deploy.keras", save_predictions=out, progress=False)
    labels = sorted((out / "labels").glob("*_labelIds.png"))
    assert [p.name for p in labels] == [f"{i:05d}_labelIds.png" for i in range(5)]
    ids = np.asarray(Image.open(labels[0]))
    assert ids.shape == (32, 48) and ids.dtype == np.uint8
    assert set(np.unique(ids)) <= set(EVAL_LABEL_IDS)
    color = np.asarray(Image.open(out / "color" / "00000_color.png"))
    overlay = np.asarray(Image.open(out / "overlay" / "00000_overlay.png"))
    assert color.shape == overlay.shape == (32, 48, 3)
    assert (out / "metrics.json").exists() and result["num_predictions"] == 5


def test_savedmodel_takes_uint8_and_matches_keras(tmp_path, stub_data, models):
    export = pytest.importorskip("lps_keras.export")
    from lps_keras.evaluation import evaluate

    recipe, _, deploy = models
    try:
        res = export.export_savedmodel(deploy, tmp_path / "sm", version=1, outputs="logits", verify=False)
    except Exception as e:  # noqa: BLE001 - the exporter belongs to another module; skip if it cannot run here
        pytest.skip(f"export_savedmodel unavailable: {e}")
    a = evaluate(recipe, res.path, progress=False)
    b = evaluate(recipe, tmp_path / "deploy.keras", progress=False)
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-3)


def test_evaluate_cli_bad_weights_suffix(tmp_path):
    bad = tmp_path / "weights.txt"
    bad.write_text("x")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "evaluate.py", "--recipe", "recipes/demo.json", "--weights", str(bad)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "weights.txt" in r.stderr and "Traceback" not in r.stderr
    keras.backend.clear_session()


@pytest.mark.needs_shared_data
def test_shipped_camvid_model_keeps_its_published_accuracy(shared_data):
    """savedmodels/camvid_lps_s/1 on the first 20 CamVid val images: its per-image quality did not regress."""
    from lps_keras.evaluation import evaluate

    recipe = load_recipe(REPO / "recipes" / "camvid_lps_s_cpu.json", [
        f"data.root={shared_data / 'camvid_segnet'}", "data.val_subset=20"])
    result = evaluate(recipe, REPO / "savedmodels" / "camvid_lps_s" / "1")
    # All 101 images give 55.3 (savedmodels/camvid_lps_s/metrics.json); a 20-image subset of this fixed
    # model gives a fixed number too, so the bound is tight against a broken export, loose against noise.
    assert result["miou"] > 0.45 and result["pixel_accuracy"] > 0.85, result
