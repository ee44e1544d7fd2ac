import dataclasses
import json
from pathlib import Path

import pytest

from lps_keras.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.json"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_round_trip(path):
    r = load_recipe(path)
    assert isinstance(r, Recipe)
    again = recipe_from_dict(json.loads(r.to_json()))
    assert again == r
    expected = 11 if r.data.dataset.startswith("camvid") else 1000 if r.data.dataset == "imagenet" else 19
    assert r.model_config().num_classes == expected  # any family (the HMSeg search recipe is MRMS)


def test_paper_settings():
    s = load_recipe(RECIPES[0].parent / "lps_l.json")
    assert (s.train.iterations, s.train.batch_size, s.train.base_lr) == (90000, 16, 0.01)
    assert (s.train.momentum, s.train.weight_decay, s.train.poly_power) == (0.9, 5e-4, 0.9)
    assert s.data.augment.crop_size == (768, 768) and s.data.augment.scale_range == (0.5, 2.0)
    c = load_recipe(RECIPES[0].parent / "camvid_lps_s.json")
    assert (c.train.iterations, c.train.batch_size, c.train.base_lr) == (40000, 12, 0.03)
    # The paper's 720x960 crop of the 960x720 originals, carried over to the 360x480 SegNet copy as the same
    # field of view (issue 14, docs/camvid_ab.md), with the paper's CamVid OHEM 0.7.
    assert c.data.augment.crop_size == (360, 480) and c.data.augment.scale_range == (0.5, 2.0)
    assert (c.train.loss, c.train.ohem_threshold) == ("ohem", 0.7)
    b = load_recipe(RECIPES[0].parent / "bdd100k_lps_s.json")
    assert b.data.augment.crop_size == (720, 1280)


def _write(tmp_path, d):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(d))
    return p


def test_unknown_key_names_key_and_file(tmp_path):
    p = _write(tmp_path, {"model": {"preset": "lps_s"}, "train": {"batchsize": 4}})
    with pytest.raises(RecipeError, match=r"r\.json.*train\.batchsize"):
        load_recipe(p)


def test_wrong_type(tmp_path):
    p = _write(tmp_path, {"model": {"preset": "lps_s"}, "train": {"batch_size": "16"}})
    with pytest.raises(RecipeError, match=r"train\.batch_size: expected an integer, got '16'"):
        load_recipe(p)


def test_negative_width(tmp_path):
    p = _write(tmp_path, {"model": {"arch": {"depth": [1] * 5, "width": [4, 8, 16, -32, 32], "resolution": [1]}}})
    with pytest.raises(RecipeError, match=r"width\[3\] must be >= 1, got -32"):
        load_recipe(p)


def test_bad_choice_and_bad_json(tmp_path):
    p = _write(tmp_path, {"model": {"preset": "lps_s"}, "train": {"loss": "focal"}})
    with pytest.raises(RecipeError, match="train.loss: 'focal'"):
        load_recipe(p)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(RecipeError, match="bad.json: not valid JSON"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.json")


def test_model_needs_exactly_one_of_preset_and_arch(tmp_path):
    with pytest.raises(RecipeError, match="exactly one"):
        load_recipe(_write(tmp_path, {"model": {}}))


def test_overrides(tmp_path):
    p = _write(tmp_path, {"model": {"preset": "lps_s"}})
    r = load_recipe(p, ["train.batch_size=4", "data.root=/data/cs", "data.augment.crop_size=[512, 1024]",
                        "model.preset=lps_tiny", "train.init=null"])
    assert r.train.batch_size == 4 and r.data.root == "/data/cs"
    assert r.data.augment.crop_size == (512, 1024) and r.model.preset == "lps_tiny" and r.train.init is None
    with pytest.raises(RecipeError, match="train.bach_size"):
        load_recipe(p, ["train.bach_size=4"])
    with pytest.raises(RecipeError, match="expected key.sub=value"):
        load_recipe(p, ["train.batch_size"])
    arch = load_recipe(_write(tmp_path, {"model": {"arch": {"depth": [1] * 5, "width": [4] * 5, "resolution": [1]}}}),
                       ["model.arch.depth=[1,2,2,2,2]"]).arch()
    assert arch.depth == (1, 2, 2, 2, 2)


def test_recipe_is_frozen():
    r = recipe_from_dict({"model": {"preset": "lps_s"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize("key,value", [("train.base_lr", "NaN"), ("train.base_lr", "Infinity"),
                                       ("train.weight_decay", "NaN"), ("search.proxy.base_lr", "-Infinity")])
def test_non_finite_numbers_are_rejected_with_their_key(tmp_path, key, value):
    p = _write(tmp_path, {"model": {"preset": "lps_s"}})
    with pytest.raises(RecipeError, match=rf"{key.replace('.', '[.]')}: must be a finite number"):
        load_recipe(p, [f"{key}={value}"])
    # json.loads reads NaN/Infinity in the file itself too.
    (tmp_path / "nan.json").write_text('{"model": {"preset": "lps_s"}, "train": {"momentum": NaN}}')
    with pytest.raises(RecipeError, match=r"nan\.json: train\.momentum: must be a finite number"):
        load_recipe(tmp_path / "nan.json")


def test_momentum_range_and_class_count_below_the_dataset(tmp_path):
    p = _write(tmp_path, {"model": {"preset": "lps_s"}})
    with pytest.raises(RecipeError, match=r"train\.momentum: must be in \[0, 1\), got 1\.5"):
        load_recipe(p, ["train.momentum=1.5"])
    with pytest.raises(RecipeError, match=r"model\.num_classes: 5 is fewer than the 19 classes of data\.dataset"):
        load_recipe(p, ["model.num_classes=5"]).check_classes_cover_dataset()
    load_recipe(p, ["model.num_classes=21"]).check_classes_cover_dataset()  # more outputs than classes is fine


def test_search_latency_source_is_measured_or_a_profile():
    base = Path(__file__).resolve().parents[1] / "recipes" / "expand_camvid.json"
    assert load_recipe(base).search.latency.source == "measured"
    r = load_recipe(base, ["search.latency.source=profile:profiles/x.json"])
    assert r.search.latency.source == "profile:profiles/x.json"
    for bad in ("profile:", "guess"):
        with pytest.raises(RecipeError, match="search.latency.source"):
            load_recipe(base, [f"search.latency.source={bad}"])


# ----------------------------------------------------------------------------- [faults]: export.name
@pytest.mark.parametrize("name", ["../../../x", "a/b", "..", ".hidden", "", "x\ny"])
def test_export_name_must_be_a_plain_name(tmp_path, name):
    # export.name becomes savedmodels/<name>: "../" would write outside savedmodels/.
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"model": {"preset": "lps_tiny"}}))
    with pytest.raises(RecipeError, match=r"r\.json: export\.name: .* name") as info:
        load_recipe(path, [f"export.name={json.dumps(name)}"])
    assert repr(name) in str(info.value)
    assert load_recipe(path, ['export.name="lps_s-v2"']).export.name == "lps_s-v2"


@pytest.mark.parametrize("depth", [40, 5000])
def test_deeply_nested_arrays_are_one_recipe_error_naming_file_and_field(tmp_path, depth):
    # 5000 levels made json raise RecursionError (a traceback); 40 is valid JSON no field accepts.
    deep = "[" * depth + "1" + "]" * depth
    path = tmp_path / "deep.json"
    arch = {"depth": "DEEP", "width": [4, 8, 16, 32, 32], "resolution": [1, 0, 0]}
    path.write_text(json.dumps({"model": {"arch": arch}}).replace('"DEEP"', deep))
    with pytest.raises(RecipeError, match=r"deep\.json.*nested more than 32") as info:
        load_recipe(path)
    if depth == 40:
        assert "model.arch.depth" in str(info.value)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    with pytest.raises(RecipeError, match=r"--set model\.arch\.depth.*more than 32"):
        load_recipe(plain, [f"model.arch.depth={deep}"])
