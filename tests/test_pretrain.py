"""ImageNet pretraining on a tiny generated class-folder set: learning, files, resume, --init, bad input."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

# Eigen kernels: bit-stable numerics for the resume comparison (oneDNN reorders sums; see test_training).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from lps_keras.arch import Arch  # noqa: E402
from lps_keras.families import get_family  # noqa: E402
from lps_keras.recipe import RecipeError, recipe_from_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 50, 40)}  # the class is the colour
ARCH = {"depth": [1, 1, 1, 1, 1], "width": [4, 8, 8, 8, 8], "resolution": [1, 0.5]}


def make_class_folders(root: Path, per_class=(8, 4), size=32, seed=0) -> Path:
    """root/{train,val}/<colour>/<i>.png: noisy images of the class colour."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for name, rgb in COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.asarray(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def tiny_recipe(root, run_dir, **train):
    t = {"iterations": 20, "batch_size": 8, "base_lr": 0.1, "weight_decay": 1e-4, "val_interval": 10,
         "checkpoint_interval": 5, "log_interval": 5, "run_dir": str(run_dir), **train}
    data = {"dataset": "imagenet", "root": str(root), "deterministic": True}
    return recipe_from_dict({
        "name": "tiny_pretrain", "model": {"arch": ARCH}, "data": data,
        "pretrain": {"image_size": [32, 32], "eval_resize": 32}, "train": t, "eval": {"batch_size": 6},
    })


def no_temps(directory: Path):
    return not [p for p in directory.rglob("*") if ".lpstmp-" in p.name]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted 20-step pretraining run (shared: the CPU is busy)."""
    from lps_keras.train import pretrain

    tmp = tmp_path_factory.mktemp("pretrain")
    root = make_class_folders(tmp / "data")
    keras.utils.set_random_seed(0)
    summary = pretrain(tiny_recipe(root, tmp / "run"), verbose=0)
    keras.backend.clear_session()
    return {"root": root, "run": tmp / "run", "summary": summary}


# --------------------------------------------------------------------------- schedule and recipe
def test_cosine_schedule_matches_formula():
    from lps_keras.train import CosineLR

    lr = CosineLR(0.1, 100, warmup_steps=10)
    for step in (0, 5, 9, 10, 50, 99, 100, 150):
        want = 0.1 * 0.5 * (1 + math.cos(math.pi * min(step, 100) / 100)) * min(1.0, (step + 1) / 10)
        assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-8)
    assert CosineLR.from_config(lr.get_config()).get_config() == lr.get_config()


def test_pretrain_section_rules(tmp_path):
    r = tiny_recipe(tmp_path, tmp_path / "run")
    assert r.pretrain.schedule == "cosine" and r.pretrain.crop_area == (0.08, 1.0)
    for key, value, message in (("crop_area", [0.5, 1.5], "pretrain.crop_area"),
                                ("crop_aspect", [2.0, 1.0], "pretrain.crop_aspect"),
                                ("schedule", "step", "pretrain.schedule: 'step'"),
                                ("image_size", [0, 32], "pretrain.image_size")):
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict({"model": {"arch": ARCH}, "data": {"dataset": "imagenet"}, "pretrain": {key: value}})


# --------------------------------------------------------------------------- data
def test_class_folders_and_crops(tmp_path):
    from lps_keras.data import IMAGENET_MEAN, IMAGENET_STD
    from lps_keras.data.imagenet import build_classification_dataset, list_class_folders

    root = make_class_folders(tmp_path / "data", per_class=(2, 2), size=40)
    folders = list_class_folders(root, "val")
    assert folders.class_names == ("blue", "green", "red") and folders.labels == (0, 0, 1, 1, 2, 2)
    recipe = tiny_recipe(root, tmp_path / "run")
    val, names = build_classification_dataset(recipe, "val", training=False, batch_size=6)
    images, labels = next(iter(val))
    assert images.shape == (6, 32, 32, 3) and list(np.asarray(labels)) == [0, 0, 1, 1, 2, 2]
    # The colour survives the resize, the crop and the normalisation: undo the latter and compare.
    rgb = np.asarray(images).mean(axis=(1, 2)) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    np.testing.assert_allclose(rgb * 255, [COLOURS[n] for n in ("blue", "blue", "green", "green", "red", "red")],
                               atol=12)
    # A subset is spread over the sorted files, so it keeps every class.
    subset = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, val_subset=3))
    _, labels = next(iter(build_classification_dataset(subset, "val", training=False, batch_size=6)[0]))
    assert list(np.asarray(labels)) == [0, 1, 2]
    train, _ = build_classification_dataset(recipe, "train", training=True, batch_size=4)
    images, labels = next(iter(train))
    assert images.shape == (4, 32, 32, 3) and set(np.asarray(labels)) <= {0, 1, 2}


# --------------------------------------------------------------------------- training
def test_pretraining_learns_and_writes_its_files(straight):
    from lps_keras.classifier import LPSClassifier

    s, run = straight["summary"], straight["run"]
    assert s["final_step"] == 20 and [h["step"] for h in s["history"]] == [10, 20]
    assert s["top1"] >= 0.75  # 3 classes: chance is 1/3
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20] and log[-1]["loss"] < log[0]["loss"]
    for name in ("last.keras", "best.keras", "backbone.keras", "metrics.json", "state.json", "recipe.json"):
        assert (run / name).is_file(), name
    assert no_temps(run)
    last = keras.saving.load_model(run / "last.keras", compile=False)
    backbone = keras.saving.load_model(run / "backbone.keras", compile=False)
    assert isinstance(last, LPSClassifier) and last.include_head and not backbone.include_head
    assert json.loads((run / "metrics.json").read_text())["top1"] == s["top1"]
    for layer in backbone.layers:
        for a, b in zip(layer.get_weights(), last.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_resume_and_atomic_backbone_write(straight, tmp_path, monkeypatch):
    from lps_keras.classifier import LPSClassifier
    from lps_keras.train import pretrain

    class Crash(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 13:
                raise RuntimeError("simulated crash")

    recipe = tiny_recipe(straight["root"], tmp_path / "run")
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(recipe, callbacks=[Crash()], verbose=0)
    assert not (tmp_path / "run" / "backbone.keras").exists()

    # The resumed run dies while writing the backbone: nothing half-written is left.
    real_save = LPSClassifier.save

    def failing_save(self, filepath, *args, **kwargs):
        if not self.include_head:
            Path(filepath).write_bytes(b"partial")
            raise OSError(f"{filepath}: disk full")
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(LPSClassifier, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        pretrain(recipe, verbose=0)
    assert not (tmp_path / "run" / "backbone.keras").exists() and no_temps(tmp_path / "run")
    monkeypatch.setattr(LPSClassifier, "save", real_save)

    out = pretrain(recipe, verbose=0)
    assert out["resumed_from_step"] == 20 and out["final_step"] == 20
    assert [h["step"] for h in out["history"]] == [10, 20]
    a = keras.saving.load_model(straight["run"] / "backbone.keras", compile=False)
    b = keras.saving.load_model(tmp_path / "run" / "backbone.keras", compile=False)
    for wa, wb in zip(a.weights, b.weights):  # the crash cost time only
        np.testing.assert_allclose(np.asarray(wb), np.asarray(wa), rtol=1e-4, atol=1e-6, err_msg=wa.path)


# --------------------------------------------------------------------------- --init
def test_init_loads_exactly_the_backbone(straight, capsys):
    from lps_keras.classifier import LPSClassifier, backbone_layer_names
    from lps_keras.model import build_model
    from lps_keras.weights import init_weights

    arch = Arch.from_dict({**ARCH, "num_classes": 11})
    path = straight["run"] / "backbone.keras"
    pretrained = keras.saving.load_model(path, compile=False)
    seg = build_model(arch)
    head_before = [w.copy() for w in seg.get_layer("head").get_weights()]
    info = init_weights(seg, path)
    expected = backbone_layer_names(LPSClassifier(arch))
    # Every block of both paths, in graph order (no interaction weights: Bilateral-B has none).
    assert expected == [f"path{p}_stage{s}_block1" for s in range(1, 6) for p in (1, 2)]
    assert info["loaded"] == expected
    assert info["skipped"] == ["head (not in source)"] and info["unused"] == []
    for name in expected:
        for a, b in zip(seg.get_layer(name).get_weights(), pretrained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(seg.get_layer("head").get_weights(), head_before):
        np.testing.assert_array_equal(a, b)  # the head keeps its random initialisation
    printed = capsys.readouterr().out
    assert f"10 layers from {path}: path1_stage1_block1," in printed and "head (not in source)" in printed

    # The full classifier checkpoint works too; its head is reported as not used.
    info = init_weights(build_model(arch), straight["run"] / "last.keras", verbose=False)
    assert info["loaded"] == expected and info["unused"] == ["classifier_head"]


def test_init_refuses_another_architecture(straight):
    from lps_keras.model import build_model
    from lps_keras.weights import WeightsError, init_weights, load_weights_file

    other = Arch.from_dict({**ARCH, "width": [4, 8, 8, 16, 16], "num_classes": 11})
    with pytest.raises(WeightsError, match=r"backbone\.keras: the pretrained backbone's architecture.*width"):
        init_weights(build_model(other), straight["run"] / "backbone.keras", verbose=False)
    # Exporting or evaluating a classifier as a segmentation model is refused, naming what it is.
    with pytest.raises(ValueError, match="an ImageNet classifier from pretrain.py, not a segmentation model"):
        load_weights_file(straight["run"] / "backbone.keras", Arch.from_dict(ARCH))
    # Another family cannot take an LPS-Net backbone: one line naming the family, not an AttributeError.
    from lps_keras.families import build

    ndnet = build(get_family("ndnet").config(preset="ndnet45", num_classes=11), input_shape=(64, 64, 3))
    with pytest.raises(WeightsError, match=r"backbone\.keras: .*LPS-Net models only; this model is of family 'ndnet'"):
        init_weights(ndnet, straight["run"] / "backbone.keras", verbose=False)


# --------------------------------------------------------------------------- bad input
def test_missing_and_empty_folders_are_one_clear_error(tmp_path):
    from lps_keras.data import DataError
    from lps_keras.train import TrainingError, pretrain

    with pytest.raises(DataError, match=r"split folder '.*nowhere/val' does not exist"):
        pretrain(tiny_recipe(tmp_path / "nowhere", tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()
    root = make_class_folders(tmp_path / "data", per_class=(1, 1))
    (root / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"val/zebra: class folder has no images"):
        pretrain(tiny_recipe(root, tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()
    segmentation = recipe_from_dict({"model": {"preset": "lps_s"}, "train": {"run_dir": str(tmp_path / "run")}})
    with pytest.raises(TrainingError, match="data.dataset: pretrain.py trains a classifier on 'imagenet'"):
        pretrain(segmentation, verbose=0)


def test_cli_bad_input_exits_2_in_one_line(tmp_path):
    root = make_class_folders(tmp_path / "data", per_class=(1, 1))
    (root / "train" / "zebra").mkdir()
    (root / "val" / "zebra").mkdir()
    (root / "val" / "zebra" / "0.png").write_bytes((root / "val" / "red" / "0.png").read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the CLI quiets TF itself
    recipe = REPO / "recipes" / "imagenet_lps_s.json"
    r = subprocess.run([sys.executable, str(REPO / "pretrain.py"), "--recipe", str(recipe),
                        "--data-root", str(root), "--run-dir", str(tmp_path / "run"), "--set", "train.batch_size=2"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"pretrain.py: error: {root / 'train' / 'zebra'}: class folder has no "
                                             "images (.jpg, .jpeg, .png, .bmp, .gif)"]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- shipped recipes
@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_strong_recipes_are_the_paper_setting_on_their_pretrained_backbone(size, shared_data):
    from lps_keras.recipe import load_recipe
    from lps_keras.train import resolve_run_dir
    from lps_keras.train.pretrain import BACKBONE_FILE

    paper = shared_data.parent / "paper" / "table4.json"
    if not paper.is_file():
        pytest.skip(f"paper data not found at {paper}")
    settings = json.loads(paper.read_text())["training_settings"]
    strong = load_recipe(REPO / "recipes" / f"lps_{size}_strong.json")
    base = load_recipe(REPO / "recipes" / f"lps_{size}.json")
    pre = load_recipe(REPO / "recipes" / f"imagenet_lps_{size}.json")
    h, w = strong.data.augment.crop_size
    assert f"crop {h}x{w}" in settings and f"{strong.train.iterations // 1000}K iterations" in settings
    assert strong.train.loss == "ohem" and "OHEM" in settings and "ImageNet pretraining" in settings
    assert strong.train.init == str(resolve_run_dir(pre) / BACKBONE_FILE) and pre.model == base.model
    # Everything else is the paper's Cityscapes setting of the base recipe.
    undo = dataclasses.replace(strong.train, iterations=base.train.iterations, loss=base.train.loss, init=None)
    assert undo == base.train and strong.model == base.model and strong.export == base.export
    assert dataclasses.replace(strong.data.augment, crop_size=base.data.augment.crop_size) == base.data.augment


def test_cli_on_a_non_image_jpg_names_the_file_in_one_line(tmp_path):
    # Decoded in the graph, this was a 35-line InvalidArgumentError that named no file.
    root = make_class_folders(tmp_path / "data", per_class=(1, 1))
    bad = root / "train" / "red" / "notes.jpg"
    bad.write_text("not an image\n")
    recipe = tmp_path / "tiny.json"
    # deterministic: the bad file is decoded within the first epoch (2 steps of 2), so the run cannot end first.
    recipe.write_text(tiny_recipe(root, tmp_path / "run", batch_size=2, iterations=40).to_json())
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the CLI quiets TF itself
    r = subprocess.run([sys.executable, str(REPO / "pretrain.py"), "--recipe", str(recipe)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pretrain.py: error: {bad}: cannot read image: "), lines
    assert not (tmp_path / "run").exists()  # failed before its first backup
