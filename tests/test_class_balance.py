"""Class-balance weights against hand computations on a tiny CamVid-layout fixture, and the recipe's rules."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lps_keras.class_balance import (
    class_stats,
    class_weights,
    count_classes,
    enet_weights,
    median_frequency_weights,
)
from lps_keras.data.pipeline import list_split
from lps_keras.recipe import RecipeError, load_recipe


def _png(path: Path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _fixture(root: Path):
    """Two 2x4 CamVid train images (11 = void). Image A: 4 sky (0), 3 road (3), 1 void.
    Image B: 6 road, 2 pole (2)."""
    a = np.array([[0, 0, 0, 0], [3, 3, 3, 11]])
    b = np.array([[3, 3, 3, 3], [3, 3, 2, 2]])
    for name, label in (("0001TP_006690", a), ("0001TP_006720", b)):
        _png(root / "train" / f"{name}.png", np.zeros((2, 4, 3)))
        _png(root / "trainannot" / f"{name}.png", label)
        _png(root / "val" / f"{name}.png", np.zeros((2, 4, 3)))
        _png(root / "valannot" / f"{name}.png", np.full((2, 4), 5))  # val: all tree (5)


def _recipe(root, *sets):
    return load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "demo.json",
                       ["data.dataset=camvid", f"data.root={root}", "model.num_classes=11", *sets])


def test_counts_and_both_weightings_by_hand(tmp_path):
    _fixture(tmp_path)
    files = list_split(_recipe(tmp_path).data, "train")
    stats = count_classes(files, 11)
    assert stats.pixels[0] == 4 and stats.pixels[3] == 9 and stats.pixels[2] == 2 and stats.total == 15
    assert stats.image_pixels[0] == 7 and stats.image_pixels[3] == 15 and stats.image_pixels[2] == 8
    # median frequency: freq sky 4/7, road 9/15, pole 2/8; median of the present classes = 4/7
    mf = median_frequency_weights(stats)
    np.testing.assert_allclose(mf[[0, 3, 2]], [1.0, (4 / 7) / (9 / 15), (4 / 7) / (2 / 8)], rtol=1e-6)
    assert mf[1] == 1.0  # building never occurs
    # ENet: 1 / ln(1.02 + p), p = 4/15, 9/15, 2/15
    en = enet_weights(stats)
    np.testing.assert_allclose(en[[0, 3, 2]], [1 / math.log(1.02 + p) for p in (4 / 15, 9 / 15, 2 / 15)],
                               rtol=1e-6)
    assert en[2] > en[0] > en[3]  # rarest weighs most


def test_counts_are_cached_and_recounted_when_a_label_changes(tmp_path):
    _fixture(tmp_path / "data")
    files = list_split(_recipe(tmp_path / "data").data, "train")
    first = class_stats(files, 11, cache=tmp_path / "cache", progress=False)
    cached = list((tmp_path / "cache" / "class_stats").glob("camvid-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["stats"]["pixels"][3] == 9
    assert class_stats(files, 11, cache=tmp_path / "cache", progress=False) == first
    _png(tmp_path / "data" / "trainannot" / "0001TP_006720.png", np.full((2, 4), 3))  # all road now
    again = class_stats(files, 11, cache=tmp_path / "cache", progress=False)
    assert again.pixels[3] == 11 and again.pixels[2] == 0


def test_recipe_weights_use_the_training_splits(tmp_path):
    _fixture(tmp_path)
    r = _recipe(tmp_path, "train.class_balance=median_frequency")
    w = class_weights(r, cache=tmp_path / "cache")
    assert w.shape == (11,) and w[2] > 1.0
    # train+val: the tree pixels of val now count too
    r2 = _recipe(tmp_path, "train.class_balance=enet", "data.train_split=train+val")
    assert len(list_split(r2.data, "train+val")) == 4
    w2 = class_weights(r2, cache=tmp_path / "cache")
    assert w2[5] < 50.0 and w2[5] != 1.0
    assert class_weights(_recipe(tmp_path)) is None
    explicit = _recipe(tmp_path, "train.class_balance=explicit", f"train.class_weights={json.dumps([1.0] * 11)}")
    np.testing.assert_array_equal(class_weights(explicit), np.ones(11, np.float32))


@pytest.mark.parametrize("sets, match", [
    (["train.class_balance=explicit"], "one weight per class"),
    (["train.class_weights=[1, 2]"], "set it to 'explicit'"),
    (["train.class_balance=explicit", "train.class_weights=[1, 2]"], "2 weights for 11 classes"),
    (["train.class_balance=explicit", "train.class_weights=[1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]"], "> 0"),
    (["train.class_balance=inverse"], "not one of none, median_frequency, enet, explicit"),
    (["train.enet_c=1.0"], "train.enet_c"),
    (["data.train_split=train+"], "empty split name"),
])
def test_bad_settings_are_refused_naming_the_field(tmp_path, sets, match):
    with pytest.raises(RecipeError, match=match):
        _recipe(tmp_path, *sets)
