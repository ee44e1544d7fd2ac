import json

import pytest

from lps_keras.arch import EXPANSION_OPS, EXPANSION_OPS_BY_NAME, Arch, ArchError
from lps_keras.presets import PRESETS, get_preset

# Paper / official-code numbers (deploy form, 19 classes; conv GMACs at 1024x2048).
PAPER = {
    "lps_tiny": (16_091, 0.063, (32, 64)),
    "lps_s": (3_371_075, 10.421, (48, 96)),
    "lps_m": (3_371_075, 17.718, (64, 128)),
    "lps_l": (9_152_291, 43.808, (64, 128)),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_params_macs_and_output_size(name):
    arch = get_preset(name)
    params, gmacs, out = PAPER[name]
    assert arch.num_params() == params
    assert round(arch.macs(1024, 2048) / 1e9, 3) == gmacs
    assert arch.output_size(1024, 2048) == out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(name):
    arch = PRESETS[name]
    assert Arch.from_json(arch.to_json()) == arch
    assert Arch.from_dict(json.loads(json.dumps(arch.to_dict()))).hash == arch.hash


def test_s_path_sizes():
    s = get_preset("lps_s")
    assert s.path_input_size(1024, 2048, 0) == (768, 1536)
    assert s.path_input_size(1024, 2048, 1) == (256, 512)
    assert s.num_paths == 2


def test_resolution_is_canonicalised_like_official():
    a = Arch((1,) * 5, (4,) * 5, (0.5, 0, 0.125))
    b = Arch((1,) * 5, (4,) * 5, (0.125, 0.5, 0))
    assert a == b and a.resolution == (0.5, 0.125, 0.0) and a.hash == b.hash
    assert Arch.from_dict({"depth": [1] * 5, "width": [4] * 5, "resolution": ["3/4", "1/4"]}).ratios == (0.75, 0.25)


@pytest.mark.parametrize("text, value", [("7/8", 0.875), ("9/8", 1.125), ("11/8", 1.375)])
def test_fraction_ratios_round_trip_and_hash_alike(text, value):
    base = {"depth": [1] * 5, "width": [4] * 5}
    from_text = Arch.from_dict({**base, "resolution": [text, "1/4"]})
    from_float = Arch.from_dict({**base, "resolution": [value, 0.25, 0]})
    assert from_text == from_float and from_text.hash == from_float.hash
    assert from_text.ratios == (value, 0.25)
    again = Arch.from_json(json.dumps(json.loads(from_text.to_json())))
    assert again == from_text and again.hash == from_text.hash
    assert from_text.short() == "{1,1,1,1,1} {4,4,4,4,4} {" + text + ",1/4,0}"


def test_ratios_above_one_sizes():
    # Steps 11-14 of Table 4 run path 1 at 9/8 and 11/8 of the input: int(H * r), then ceil(/2) four times.
    arch = Arch((1,) * 5, (4,) * 5, (1.375, 0.25))
    assert arch.path_input_size(32, 48) == (44, 66)
    assert arch.feature_sizes(32, 48) == [(22, 33), (11, 17), (6, 9), (3, 5), (3, 5)]
    assert arch.output_size(1024, 2048) == (88, 176)
    assert Arch((1,) * 5, (4,) * 5, (1.125,)).output_size(32, 48) == (3, 4)  # 36x54 -> 18x27 -> 9x14 -> 5x7 -> 3x4
    assert arch.expand(EXPANSION_OPS_BY_NAME["res_path1"], 3).ratios == (1.75, 0.25)


def test_hash_is_stable_and_discriminating():
    tiny = get_preset("lps_tiny")
    # Pinned: a changed hash would orphan every latency cache and search journal.
    assert tiny.hash == Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0)).hash
    assert len({p.hash for p in PRESETS.values() if p != tiny} | {tiny.hash}) == len(set(PRESETS.values()))
    assert tiny.with_num_classes(11).hash != tiny.hash


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"depth": (1, 1, 1, 1)}, "depth"),
        ({"depth": (1, 1, 0, 1, 1)}, "depth[2]"),
        ({"width": (4, 8, -16, 32, 32)}, "width[2]"),
        ({"width": (4, 8, 1.5, 32, 32)}, "width[2]"),
        ({"resolution": (0, 0, 0)}, "resolution"),
        ({"resolution": (0.5, -0.25)}, "resolution[1]"),
        ({"resolution": (1, 0.5, 0.25, 0.125)}, "resolution"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    base = {"depth": (1,) * 5, "width": (4, 8, 16, 32, 32), "resolution": (0.5, 0, 0)}
    with pytest.raises(ArchError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Arch(**{**base, **kwargs})


def test_unknown_key_rejected():
    with pytest.raises(ArchError, match="unknown arch key"):
        Arch.from_dict({"depth": [1] * 5, "width": [4] * 5, "resolution": [1], "widht": 3})


def test_expansion_arithmetic():
    tiny = get_preset("lps_tiny")
    assert len(EXPANSION_OPS) == 10
    assert [op.dimension for op in EXPANSION_OPS].count("depth") == 3
    assert [op.dimension for op in EXPANSION_OPS].count("width") == 4
    assert (tiny + EXPANSION_OPS_BY_NAME["depth_s3-5"]).depth == (1, 1, 2, 2, 2)
    assert tiny.expand(EXPANSION_OPS_BY_NAME["width_s1-5"], 2).width == (12, 24, 48, 96, 96)
    assert tiny.expand(EXPANSION_OPS_BY_NAME["res_path1"], 2).resolution == (0.75, 0, 0)
    # A new path: both lower-path ops give the same canonical arch (dedup in the search).
    assert tiny + EXPANSION_OPS_BY_NAME["res_path2"] == tiny + EXPANSION_OPS_BY_NAME["res_path3"]
    assert (tiny + EXPANSION_OPS_BY_NAME["res_path2"]).resolution == (0.5, 0.125, 0)
    assert tiny.expand(EXPANSION_OPS[0], 0) == tiny
    with pytest.raises(ArchError):
        tiny.expand(EXPANSION_OPS[0], -1)


def test_unknown_preset():
    with pytest.raises(ArchError, match="lps_xl"):
        get_preset("lps_xl")
