"""Presets against the paper: the Table 4 rows, the op and multiple between them, S/M/L as rows."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from lps_keras.arch import EXPANSION_OPS, EXPANSION_OPS_BY_NAME, Arch, ArchError
from lps_keras.presets import PRESETS, TABLE4, Table4Row, get_preset

STEPS = [f"table4_step{i:02d}" for i in range(15)]

# Read off the paper's Table 4 by hand: the op (lps_keras.arch names) and multiple of each step.
EXPECTED_OPS = {
    1: ("depth_s4-5", 7), 2: ("width_s2-5", 1), 3: ("width_s1-5", 1), 4: ("res_path1", 1),
    5: ("depth_s2-5", 2), 6: ("res_path2", 2), 7: ("res_path1", 1), 8: ("res_path1", 2),
    9: ("width_s3-5", 1), 10: ("width_s4-5", 1), 11: ("res_path1", 1), 12: ("res_path1", 2),
    13: ("width_s2-5", 1), 14: ("width_s3-5", 1),
}
PAPER_MODELS = {"LPS-Net-S": ("lps_s", 7), "LPS-Net-M": ("lps_m", 8), "LPS-Net-L": ("lps_l", 10)}


def _vector(arch: Arch) -> list[Fraction]:
    """B, C and R of ``arch`` as one exact vector (ratios are binary fractions, so Fraction is exact)."""
    return [Fraction(v) for v in (*arch.depth, *arch.width, *arch.resolution)]


def _op_vector(op) -> list[Fraction]:
    return [Fraction(v) for v in (*op.depth, *op.width, *op.resolution)]


def _matching_ops(a: Arch, b: Arch) -> list[tuple[str, int]]:
    """Every (op, k >= 1) with b - a == k * delta, element-wise on the stored vectors."""
    diff = [y - x for x, y in zip(_vector(a), _vector(b))]
    found = []
    for op in EXPANSION_OPS:
        delta = _op_vector(op)
        ks = {d / s for d, s in zip(diff, delta) if s != 0}
        if len(ks) != 1 or any(d != 0 for d, s in zip(diff, delta) if s == 0):
            continue
        (k,) = ks
        if k.denominator == 1 and k >= 1:
            found.append((op.name, int(k)))
    return found


def test_table4_has_the_fifteen_steps_in_order():
    assert list(TABLE4) == STEPS
    assert [TABLE4[name].step for name in STEPS] == list(range(15))


@pytest.mark.parametrize("step", range(1, 15))
def test_consecutive_rows_differ_by_exactly_one_op(step):
    a, b = PRESETS[STEPS[step - 1]], PRESETS[STEPS[step]]
    row = TABLE4[STEPS[step]]
    assert _matching_ops(a, b) == [(row.op, row.k)] == [EXPECTED_OPS[step]]
    assert a.expand(EXPANSION_OPS_BY_NAME[row.op], row.k) == b


def test_steps_named_in_the_issue():
    assert (TABLE4["table4_step01"].op, TABLE4["table4_step01"].k) == ("depth_s4-5", 7)
    assert EXPANSION_OPS_BY_NAME["depth_s4-5"].depth == (0, 0, 0, 1, 1)
    assert (TABLE4["table4_step05"].op, TABLE4["table4_step05"].k) == ("depth_s2-5", 2)
    assert EXPANSION_OPS_BY_NAME["depth_s2-5"].depth == (0, 1, 1, 1, 1)
    assert (TABLE4["table4_step12"].op, TABLE4["table4_step12"].k) == ("res_path1", 2)
    assert EXPANSION_OPS_BY_NAME["res_path1"].resolution == (0.125, 0, 0)
    assert TABLE4["table4_step00"].op is None and TABLE4["table4_step00"].k is None


def test_start_and_paper_models_are_rows():
    assert PRESETS["table4_step00"] == PRESETS["lps_tiny"]
    named = {row.name: row.step for row in TABLE4.values() if row.name}
    assert named == {name: step for name, (_, step) in PAPER_MODELS.items()}
    for preset, step in PAPER_MODELS.values():
        assert PRESETS[preset] == PRESETS[STEPS[step]]


def test_rows_by_hand():
    # Independent of presets.json: the rows the paper prints for the start, S, step 12 and the end.
    assert PRESETS["table4_step00"] == Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0))
    assert PRESETS["table4_step07"] == Arch((1, 3, 3, 10, 10), (8, 24, 48, 96, 96), (0.75, 0.25, 0))
    assert PRESETS["table4_step12"] == Arch((1, 3, 3, 10, 10), (8, 24, 64, 160, 160), (11 / 8, 1 / 4, 0))
    assert PRESETS["table4_step14"] == Arch((1, 3, 3, 10, 10), (8, 32, 96, 224, 224), (1.375, 0.25, 0))
    assert (TABLE4["table4_step14"].latency_ms, TABLE4["table4_step14"].miou) == (31.18, 74.8)


def test_table4_params():
    # 5,961,059 and 17,994,515: the deploy parameter counts of the paper's steps 9 and 14 (19 classes).
    assert PRESETS["table4_step09"].num_params() == 5_961_059
    assert PRESETS["table4_step14"].num_params() == 17_994_515


def test_latency_and_miou_grow_along_the_table():
    rows = list(TABLE4.values())
    assert all(a.latency_ms < b.latency_ms and a.miou < b.miou for a, b in zip(rows, rows[1:]))


@pytest.mark.needs_shared_data
def test_presets_equal_the_papers_table(shared_data):
    path = shared_data.parent / "paper" / "table4.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    table = json.loads(path.read_text())
    columns = table["columns"]
    assert columns == ["step", "depth", "width", "resolution", "latency_ms", "miou", "dimension", "name"]
    assert len(table["rows"]) == len(STEPS)
    for values in table["rows"]:
        paper = dict(zip(columns, values))
        name = STEPS[paper["step"]]
        arch, row = PRESETS[name], TABLE4[name]
        assert list(arch.depth) == paper["depth"]
        assert list(arch.width) == paper["width"]
        assert [Fraction(r) for r in arch.resolution] == [Fraction(r) for r in paper["resolution"]]
        assert (row.step, row.latency_ms, row.miou, row.name) == (
            paper["step"], paper["latency_ms"], paper["miou"], paper["name"])
        assert (row.op and EXPANSION_OPS_BY_NAME[row.op].dimension) == paper["dimension"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"op": "depth_s9"}, "op must be one of"),
        ({"k": 0.5}, "k must be an int"),
        ({"op": None}, "op and k are null exactly for step 0"),
        ({"miou": "high"}, "miou must be a positive number"),
        ({"latency": 1.0}, "unknown key"),
    ],
)
def test_table4_row_validation(change, message):
    good = {"step": 3, "op": "res_path1", "k": 1, "latency_ms": 1.0, "miou": 50.0}
    with pytest.raises(ArchError, match=message):
        Table4Row.from_dict({**good, **change}, "presets.json: x.table4")
    assert Table4Row.from_dict(good, "x").name is None


def test_get_preset_keeps_the_arch():
    assert get_preset("table4_step11", 11) == PRESETS["table4_step11"].with_num_classes(11)
    assert get_preset("table4_step11").ratios == (1.125, 0.25)
