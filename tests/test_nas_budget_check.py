"""benchmarks/nas_budget_check.py's verdicts: within +-15 % of each budget, and the budgets' order kept."""

from pathlib import Path

from helpers import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("nas_budget_check")


def test_report_judges_each_budget_and_the_order():
    check = _module()
    rows = [{"scale": 0.5, "budget_now_ms": 5.0, "table_ms": 5.1, "measured_ms": 5.6},
            {"scale": 1.0, "budget_now_ms": 10.0, "table_ms": 9.8, "measured_ms": 12.0},
            {"scale": 2.0, "budget_now_ms": 20.0, "table_ms": 19.0, "measured_ms": 18.0}]
    doc = check.report(rows)
    assert [r["within_15pct"] for r in doc["rows"]] == [True, False, True]  # 1.12, 1.20, 0.90
    assert doc["ordered"] and not doc["all_within_15pct"]
    rows[2]["measured_ms"] = 11.0
    assert not check.report(rows)["ordered"]
    assert "| 1× | 10.000 | 9.800 | 12.000 | 1.20 | no |" in check.markdown(check.report(rows))


def test_later_scales_search_against_the_first_scales_budget_and_table(tmp_path, monkeypatch):
    import json

    import lps_keras.nas.run as nas_run

    check = _module()
    seen = []

    def fake_search(recipe, run_dir, log=print):
        budget = Path(run_dir) / "budget.json"
        seen.append((recipe.nas.budget_scale, recipe.nas.latency_table,
                     json.loads(budget.read_text()) if budget.exists() else None))
        if not budget.exists():  # the first scale times the budget's network (here: a stand-in value)
            budget.parent.mkdir(parents=True, exist_ok=True)
            budget.write_text(json.dumps({"reference_ms": 5.0, "device": "CPU:A x2"}))
        ms = 5.0 * recipe.nas.budget_scale
        return {"measured": {"budget_now_ms": ms, "derived_ms": ms, "device": "CPU:A x2"}, "table_ms": ms,
                "config": {}}

    monkeypatch.setattr(nas_run, "run_search", fake_search)
    out = tmp_path / "check"
    assert check.main(["--recipe", str(REPO / "recipes" / "hmseg_search_camvid.json"), "--scales", "0.5,1,2",
                       "--output", str(out)]) == 0
    table = str(out / "x0.5" / "latency_table.json")
    assert seen == [(0.5, None, None), (1.0, table, {"reference_ms": 5.0, "device": "CPU:A x2"}),
                    (2.0, table, {"reference_ms": 5.0, "device": "CPU:A x2"})]
    doc = json.loads((out / "budget_check.json").read_text())
    assert doc["ordered"] and doc["all_within_15pct"] and doc["devices"] == ["CPU:A x2"]
