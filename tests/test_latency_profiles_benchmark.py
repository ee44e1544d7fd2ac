"""benchmarks/latency_profiles.py: the validation table from hand-made profiles, and the README's table is its
printout of the shipped profiles."""

import json
import math
from pathlib import Path

import numpy as np
from helpers import load_benchmark

from lps_keras.latency.profile import FEATURES, make_profile

REPO = Path(__file__).resolve().parents[1]


def _measured(tmp_path):
    coef = np.zeros(len(FEATURES))
    coef[0] = 1.0
    prof = make_profile(coef, "openvino", "fp32", (1, 64, 96, 3), device="CPU:test", measured=True, source="hand",
                        residual_sd_rel=0.05, versions={"openvino": "2026.4.1-22982-e213"}, minutes=2.3)
    prof["model_selection"] = {"chosen": "linear", "loo_median_abs_rel_error": {"linear": 0.075, "kernels": 0.09}}
    prof["validation"] = {"n": 4, "within_10pct": 0.75, "median_abs_rel_error": 0.0751,
                          "max_abs_rel_error": 0.2, "kendall_tau": 2 / 3}
    prof["repeatability"] = {"n": 2, "within_10pct": 0.5, "median_abs_rel_error": 0.12}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(prof))
    return path


def _paper(tmp_path):
    coef = np.zeros(len(FEATURES))
    coef[0] = 1.0
    prof = make_profile(coef, "tensorrt", "fp32", (1, 1024, 2048, 3), device="GPU:paper", measured=False,
                        source="FITTED TO PUBLISHED NUMBERS", residual_sd_rel=0.01)
    prof["leave_one_out"] = {"n": 2, "within_10pct": 0.5, "median_abs_rel_error": 0.15, "max_abs_rel_error": 0.2,
                             "kendall_tau": 1.0}
    prof["rows"] = [{"paper_ms": 1.0, "loo_ms": 0.9}, {"paper_ms": 2.0, "loo_ms": 2.4}]  # -10 %, +20 %
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    return path


def test_the_table_of_hand_made_profiles(tmp_path, capsys):
    mod = load_benchmark("latency_profiles")
    assert mod.main([str(_measured(tmp_path)), str(_paper(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert ("| m.json | CPU:test | openvino 2026.4 | - | fp32, 1×64×96×3 | linear (7.5 %; kernels 9.0 %) | 4 | 75 % "
            "| 7.5 % | 20 % | 0.667 | 50 % / 12.0 % | 2.3 |") in out
    sigma = 100 * math.sqrt((0.1 ** 2 + 0.2 ** 2) / 2)  # the RMS of the leave-one-out residuals: 15.8 %
    assert (f"| p.json | GPU:paper | tensorrt | fp32, 1×1024×2048×3 | 2 | 50 % | 15.0 % | 20 % | 1.000 "
            f"| {sigma:.1f} % |") in out
    assert out.index("Measured profiles") < out.index("| m.json") < out.index("NOT measured") < out.index("| p.json")


def test_a_file_that_is_not_a_profile_exits_2_in_one_line(tmp_path, capsys):
    mod = load_benchmark("latency_profiles")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert mod.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.json" in err and len(err.splitlines()) == 1


def _readme_row(first_cell):
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"README has no table row starting with {first_cell!r}")


#: The shipped profiles and the first cell of their README rows (the EPYC table, then the Xeon one).
README_ROWS = {
    "profiles/epyc_avx2_2core_openvino_fp32_360x480.json": "openvino 2026.4",
    "profiles/epyc_avx2_2core_litert_fp32_360x480.json": "litert 2.3 (XNNPACK)",
    "profiles/epyc_avx2_2core_tf_fp32_360x480.json": "tf 2.21",
    "profiles/epyc_avx2_2core_onnxruntime_fp32_360x480.json": "onnxruntime 1.32",
    "docs/latency_repeat_xeon_amx/profile_onnxruntime_spinning_on.json": "onnxruntime 1.32, spinning on",
    "profiles/xeon_amx_2core_onnxruntime_fp32_360x480.json": "onnxruntime 1.32, spinning off",
}


def test_the_readme_tables_are_the_printout_of_the_shipped_profiles():
    """Each README row of the EPYC and Xeon tables carries the figures the benchmark prints for its profile."""
    mod = load_benchmark("latency_profiles")
    for path, first_cell in README_ROWS.items():
        path = REPO / path
        figures = dict(zip(mod.MEASURED_HEADER, mod.measured_row(path.name, json.loads(path.read_text()))))
        readme = _readme_row(first_cell)
        assert first_cell.startswith(figures["backend"])
        assert readme[1].startswith(figures["model (leave-one-out on training nets)"].split(";")[0].rstrip(")"))
        assert readme[2].startswith(figures["held-out networks"])
        assert readme[3:7] == [figures[k] for k in ("within ±10 %", "median error", "worst", "Kendall τ")]
        assert readme[7].startswith(figures["repeatability (two sets): within ±10 % / median"])
        assert readme[8] == figures["minutes"]
