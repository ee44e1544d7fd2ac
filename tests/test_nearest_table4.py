"""benchmarks/nearest_table4.py: the nearest row by median latency, and a bad recipe exits 2 without a traceback."""

from helpers import load_benchmark


def test_nearest_row_by_paired_difference():
    mod = load_benchmark("nearest_table4")
    deltas = {"table4_step00": -0.20, "table4_step01": -0.05, "table4_step02": 0.10}
    assert mod.nearest(deltas) == "table4_step01"  # |-0.05| < |0.10| < |-0.20|
    assert mod.nearest({"a": -9.0, "b": -3.0}) == "b"  # every row faster: the slowest of them
    assert mod.nearest({"a": -0.25, "b": 0.25}) == "a"  # a tie keeps the first row


def test_missing_recipe_is_one_clear_error(tmp_path, capsys):
    mod = load_benchmark("nearest_table4")
    out = tmp_path / "n.json"
    assert mod.main(["--recipe", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "Traceback" not in err
    assert not out.exists()
