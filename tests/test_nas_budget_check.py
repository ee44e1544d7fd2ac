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
