"""A finished expansion read back from its journal (search/replay.py, expand.py --from-journal): the recorded
steps for the reports, the fields the journal predates filled from its scores, and each step judged again."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lps_keras.search.decision import DecisionConfig
from lps_keras.search.journal import SearchJournal
from lps_keras.search.replay import recorded_steps, rejudge, replay_lines

REPO = Path(__file__).resolve().parents[1]
JOURNAL = REPO / "docs" / "expansion_camvid_journal.json"


def test_heterogeneity_the_journal_predates_comes_from_its_scores():
    """The published run's journal has no heterogeneity; filled in, it is max s_i^2 / s_p^2 over the parent and
    the candidates at that step's seeds (numpy, ddof 1), e.g. 6.10 at step 4."""
    raw = json.loads(JOURNAL.read_text())
    assert all("heterogeneity" not in s for s in raw["steps"])
    steps = recorded_steps(SearchJournal(JOURNAL))
    assert [s.index for s in steps] == list(range(6)) and steps[0].heterogeneity is None
    for s, r in zip(steps[1:], raw["steps"][1:]):
        samples = [r["parent_scores"]] + [c["scores"] for c in r["candidates"] if c["scores"]]
        var = [np.var(x, ddof=1) for x in samples if len(x) >= 2]
        pooled = sum((len(x) - 1) * v for x, v in zip(samples, var)) / sum(len(x) - 1 for x in samples)
        assert s.heterogeneity == pytest.approx(max(var) / pooled)
        assert s.pooled_sd == r["pooled_sd"]  # recorded: kept as it was
        assert (s.verdict, s.op) == (r["verdict"], r["op"])  # the run's record, not a new judgement
    assert steps[4].heterogeneity == pytest.approx(6.10, abs=0.01)


def test_rejudge_says_which_verdicts_the_current_rules_change():
    steps = recorded_steps(SearchJournal(JOURNAL))
    search = DecisionConfig(alpha=0.05, epsilon=0.005, latency_z=2.0, looks=3)  # expand_camvid.json's
    assert [rejudge(s, search).kind for s in steps[1:]] == ["undecided"] * 5
    assert not any("CHANGED" in line for line in replay_lines(steps, search))
    # an indifference zone of 10 points would have made step 5 equivalent: flagged
    wide = DecisionConfig(alpha=0.05, epsilon=0.1, latency_z=2.0, looks=3)
    lines = replay_lines(steps, wide)
    assert "CHANGED" in lines[4] and "by the current rules equivalent" in lines[4]


def test_expand_from_journal_writes_the_reports_without_training(tmp_path, capsys):
    import expand

    assert expand.main(["--recipe", str(REPO / "recipes" / "expand_camvid.json"), "--from-journal", str(JOURNAL),
                        "--output", str(tmp_path)]) == 0
    with open(tmp_path / "expansion.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["decision"] for r in rows] == ["", *["undecided"] * 5]
    assert rows[4]["heterogeneity"] and float(rows[4]["heterogeneity"]) == pytest.approx(6.10, abs=0.01)
    assert {"pooled_sd", "heterogeneity"} <= set(rows[0])
    assert (tmp_path / "expansion.png").stat().st_size > 0 and (tmp_path / "table4_comparison.md").exists()
    out = capsys.readouterr().out
    assert "judged again by the current rules (looks 3)" in out and out.count("step ") >= 5
