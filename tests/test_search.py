"""Algorithm 1 (progressive expansion) with synthetic latency and accuracy functions.

The additive latency model makes every expected choice computable by hand:

    lat(N) = sum(depth) + sum(width) / 8 + 16 * sum(ratios)

so the ops add a constant regardless of N: depth_s2-5 +4, depth_s3-5 +3, depth_s4-5 +2,
width_s1-5 +11.5, width_s2-5 +11, width_s3-5 +10, width_s4-5 +8, each res op +2 per 1/8.
The target increment is therefore always 11.5 (width_s1-5), and k is 3, 4, 6 for the depth
ops, 1 for every width op (width_s4-5: |8 - 11.5| = 3.5 < |16 - 11.5| = 4.5) and 6 for the
resolution ops (|12 - 11.5| = 0.5 < |10 - 11.5| = 1.5).

The score is a concave piecewise-linear function (all values exact in binary floating point):

    P(N) = min(D, 11) + min(W, 160) / 8 + 8 * min(r1, 1) + 2 * r2 + r3

with D = sum(depth), W = sum(width), r1 >= r2 >= r3 the path ratios.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lps_keras.arch import EXPANSION_OPS, EXPANSION_OPS_BY_NAME, Arch, ExpansionOp
from lps_keras.recipe import load_recipe
from lps_keras.search import (
    DecisionConfig,
    EvalContext,
    Evaluation,
    Expansion,
    JournalError,
    RacingConfig,
    SearchError,
    SearchJournal,
    evaluate_candidates,
    find_k,
    fingerprint,
    nearest_k,
    plot_expansion,
    propose_candidates,
    run_expansion,
    step_seed,
    student_t_quantile,
    write_step_recipes,
    write_table,
)

REPO = Path(__file__).resolve().parents[1]
START = Arch(depth=(1, 1, 1, 1, 1), width=(4, 8, 16, 32, 32), resolution=(0.5, 0, 0))


def additive_latency(arch: Arch) -> float:
    return sum(arch.depth) + sum(arch.width) / 8 + 16 * sum(arch.resolution)


def concave_score(arch: Arch, context=None) -> float:
    r1, r2, r3 = arch.resolution
    return min(sum(arch.depth), 11) + min(sum(arch.width), 160) / 8 + 8 * min(r1, 1) + 2 * r2 + r3


def A(depth, width, res) -> Arch:
    return Arch(depth=depth, width=width, resolution=res)


class Counter:
    """evaluate_fn that counts calls per arch and can fail on the n-th call."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, arch: Arch, context: EvalContext):
        with self._lock:
            self.calls.append(arch.hash)
            n = len(self.calls)
        if self.fail_on is not None and n == self.fail_on:
            raise RuntimeError("simulated interruption")
        return Evaluation(score=concave_score(arch), metrics={"mIoU": concave_score(arch), "step": context.step},
                          weights=f"candidates/{context.key}.keras")


def quiet(_msg):
    pass


# --------------------------------------------------------------------------- find_k
def test_find_k_closer_of_last_two():
    assert find_k(lambda k: 2.0 * k, 11.5, 16) == (6, 12.0, False)  # 12 (0.5) beats 10 (1.5)
    assert find_k(lambda k: 4.0 * k, 11.5, 16) == (3, 12.0, False)
    assert find_k(lambda k: 8.0 * k, 11.5, 16) == (1, 8.0, False)  # 8 (3.5) beats 16 (4.5)
    assert find_k(lambda k: 11.5 * k, 11.5, 16) == (1, 11.5, False)  # the L_T op itself


def test_find_k_tie_goes_to_smaller_k():
    assert find_k(lambda k: 2.0 * k, 11.0, 16) == (5, 10.0, False)  # |10 - 11| == |12 - 11|


def test_find_k_stops_growing_once_target_reached():
    seen = []

    def lat(k):
        seen.append(k)
        return 3.0 * k

    assert find_k(lat, 10.0, 16) == (3, 9.0, False)  # 9 (1) beats 12 (2)
    assert seen == [1, 2, 3, 4]


def test_find_k_bounded_by_max_k_and_invalid_arch():
    assert find_k(lambda k: float(k), 100.0, 16) == (16, 16.0, True)
    assert find_k(lambda k: float(k) if k < 3 else None, 100.0, 16) == (2, 2.0, True)


def test_find_k_noisy_latency_takes_best_seen():
    lats = {1: 9.9, 2: 9.5, 3: 10.2}
    assert find_k(lats.get, 10.0, 16) == (1, 9.9, False)


# --------------------------------------------------------------------------- proposals
def test_propose_candidates_additive_model():
    target, cands = propose_candidates(START, EXPANSION_OPS, additive_latency, 16)
    assert additive_latency(START) == 24.5
    assert target == 36.0
    got = [(c.op, c.k, c.latency, c.aliases) for c in cands]
    assert got == [
        ("depth_s2-5", 3, 36.5, ()),
        ("depth_s3-5", 4, 36.5, ()),
        ("depth_s4-5", 6, 36.5, ()),
        ("width_s1-5", 1, 36.0, ()),
        ("width_s2-5", 1, 35.5, ()),
        ("width_s3-5", 1, 34.5, ()),
        ("width_s4-5", 1, 32.5, ()),
        ("res_path1", 6, 36.5, ()),
        ("res_path2", 6, 36.5, ("res_path3",)),  # (1/2, 3/4, 0) == (1/2, 0, 3/4) after canonicalisation
    ]
    assert cands[0].arch == A((1, 4, 4, 4, 4), (4, 8, 16, 32, 32), (0.5, 0, 0))
    assert cands[7].arch.resolution == (1.25, 0, 0)
    assert cands[8].arch.resolution == (0.75, 0.5, 0)
    assert not any(c.capped for c in cands)


def test_propose_candidates_dedup_second_path_on_one_path_arch():
    one_path = A((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (1, 0, 0))
    res_ops = [op for op in EXPANSION_OPS if op.dimension == "resolution"]
    target, cands = propose_candidates(one_path, res_ops, additive_latency, 16)
    assert target == additive_latency(one_path) + 2
    assert [(c.op, c.k, c.aliases) for c in cands] == [("res_path1", 1, ()), ("res_path2", 1, ("res_path3",))]
    assert cands[1].arch.resolution == (1, 0.125, 0)


def test_propose_candidates_macs_latency_brute_force():
    def macs(a):
        return float(a.macs(64, 128))

    target, cands = propose_candidates(START, EXPANSION_OPS, macs, 16)
    assert target == max(macs(START + op) for op in EXPANSION_OPS)
    by_op = {c.op: c for c in cands}
    for op in EXPANSION_OPS:
        lats = [macs(START.expand(op, k)) for k in range(1, 17)]
        k_ref = min(range(16), key=lambda i: (abs(lats[i] - target), i)) + 1  # argmin, ties -> smaller k
        if op.name == "res_path3":
            assert by_op["res_path2"].aliases == ("res_path3",)
            assert START.expand(op, k_ref) == by_op["res_path2"].arch
            continue
        assert by_op[op.name].k == k_ref, op.name
        assert by_op[op.name].latency == lats[k_ref - 1]


def test_propose_candidates_tie_and_invalid_op():
    ops = [
        ExpansionOp("shrink", "depth", depth=(0, 0, 0, 0, -1)),  # invalid from depth 1: skipped
        EXPANSION_OPS_BY_NAME["depth_s4-5"],
        ExpansionOp("w88", "width", width=(0, 0, 0, 0, 88)),  # +11: depth_s4-5 ties at k=5 (10) / k=6 (12)
    ]
    target, cands = propose_candidates(START, ops, additive_latency, 16)
    assert target == 24.5 + 11
    assert [(c.op, c.k) for c in cands] == [("depth_s4-5", 5), ("w88", 1)]


def test_propose_candidates_stops_at_invalid_k():
    start = A((1, 1, 1, 1, 3), (4, 8, 16, 32, 32), (0.5, 0, 0))
    ops = [ExpansionOp("shrink", "depth", depth=(0, 0, 0, 0, -1)), EXPANSION_OPS_BY_NAME["width_s4-5"]]
    target, cands = propose_candidates(start, ops, additive_latency, 16)
    # shrink lowers latency (k=1: -1, k=2: -2, k=3 invalid), so the closest to L_T is k=1, capped.
    assert [(c.op, c.k, c.capped) for c in cands] == [("shrink", 1, True), ("width_s4-5", 1, False)]


# --------------------------------------------------------------------------- full runs
EXPECTED_TRAJECTORY = [
    # step, op, k, depth, width, resolution, latency, score, L_T
    (0, None, 0, (1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0), 24.5, 20.5, None),
    # width_s4-5 slope (19.5 - 11.5) / 8 = 1 beats depth 6/12, res_path1 4/12, width_s3-5 8.5/10.
    (1, "width_s4-5", 1, (1, 1, 1, 1, 1), (4, 8, 16, 64, 64), (0.5, 0, 0), 32.5, 28.5, 36.0),
    # width saturated (W cap 160): depth 6/12 wins; the three depth ops tie exactly -> Delta order.
    (2, "depth_s2-5", 3, (1, 4, 4, 4, 4), (4, 8, 16, 64, 64), (0.5, 0, 0), 44.5, 34.5, 44.0),
    # depth saturated (D cap 11): res_path1 4/12 beats res_path2 3/12 and width_s4-5 0.5/8.
    (3, "res_path1", 6, (1, 4, 4, 4, 4), (4, 8, 16, 64, 64), (1.25, 0, 0), 56.5, 38.5, 56.0),
    # r1 saturated: res_path2 (2 * 3/4) / 12 = 1/8 beats width_s4-5 1/16.
    (4, "res_path2", 6, (1, 4, 4, 4, 4), (4, 8, 16, 64, 64), (1.25, 0.75, 0), 68.5, 40.0, 68.0),
    # res_path2 again: (5/4, 3/2) -> (3/2, 5/4): +1 / 12 beats res_path3 0.75/12 and width_s4-5 1/16.
    (5, "res_path2", 6, (1, 4, 4, 4, 4), (4, 8, 16, 64, 64), (1.5, 1.25, 0), 80.5, 41.0, 80.0),
]


def trajectory(steps):
    return [(s.index, s.op, s.k, s.arch.depth, s.arch.width, s.arch.resolution, s.latency, s.score,
             s.target_latency) for s in steps]


def test_run_expansion_hand_computed_trajectory():
    steps = run_expansion(START, additive_latency, concave_score, steps=5, progress=quiet)
    assert trajectory(steps) == EXPECTED_TRAJECTORY
    assert [s.dimension for s in steps] == [None, "width", "depth", "resolution", "resolution", "resolution"]
    assert steps[1].slope == 1.0
    # Step 4: res_path3 is an alias of res_path2 (both add the second path of 3/4).
    assert {c.op: c.aliases for c in steps[4].candidates}["res_path2"] == ("res_path3",)
    # Step 5: with two paths, res_path3 is a distinct candidate (a third path).
    assert "res_path3" in {c.op for c in steps[5].candidates}
    assert steps[2].candidates[0].slope == steps[2].candidates[1].slope == steps[2].candidates[2].slope == 0.5


def test_run_expansion_measures_each_latency_once_and_scores_start():
    lat_calls: list[str] = []

    def lat(a):
        lat_calls.append(a.hash)
        return additive_latency(a)

    ev = Counter()
    journal = SearchJournal(None)
    steps = run_expansion(START, lat, ev, steps=3, journal=journal, progress=quiet)
    assert len(lat_calls) == len(set(lat_calls)) == len(journal.latencies)
    assert len(ev.calls) == sum(len(e["seeds"]) for e in journal.evaluations.values())
    assert ev.calls[0] == START.hash  # the start's P is scored (with the first step's candidates)
    # Every step scores its parent again, at its own seeds: the chosen network of step t is trained
    # again as the parent of step t + 1 (seed 1000 * (t + 1)), never reused with its selected score.
    for t in (1, 2, 3):
        assert set(journal.evaluations_of(steps[t - 1].arch)) >= {step_seed(t, 0)}


def test_run_expansion_zero_steps():
    steps = run_expansion(START, additive_latency, concave_score, steps=0, progress=quiet)
    assert trajectory(steps) == EXPECTED_TRAJECTORY[:1]


def test_parallel_executor_matches_sequential():
    seq = run_expansion(START, additive_latency, Counter(), steps=3, progress=quiet)
    with ThreadPoolExecutor(max_workers=3) as pool:
        par = run_expansion(START, additive_latency, Counter(), steps=3, executor=pool, progress=quiet)
    assert [s.to_dict() for s in par] == [s.to_dict() for s in seq]


def test_evaluate_candidates_parallel_failure_keeps_finished():
    items = [(START.expand(EXPANSION_OPS[3], k), EvalContext(step=1, key=str(k))) for k in range(1, 5)]

    def ev(arch, ctx):
        if ctx.key == "2":
            raise ValueError("boom")
        return {"score": concave_score(arch), "metrics": {"x": 1}}

    finished = []
    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(ValueError, match="boom"):
        evaluate_candidates(items, ev, executor=pool, on_result=lambda i, e: finished.append(i))
    assert 0 in finished and 1 not in finished
    res = evaluate_candidates(items[:1], ev)
    assert res[0].score == concave_score(items[0][0]) and res[0].metrics == {"x": 1} and res[0].seconds >= 0
    with pytest.raises(SearchError, match="finite score"):
        evaluate_candidates(items[:1], lambda a, c: float("nan"))


# --------------------------------------------------------------------------- journal
def test_resume_after_interruption_does_not_reevaluate(tmp_path):
    path = tmp_path / "journal.json"
    reference = run_expansion(START, additive_latency, Counter(), steps=2, progress=quiet)

    first = Counter(fail_on=3)  # start, candidate 1 finish; candidate 2 raises
    with pytest.raises(RuntimeError, match="simulated"):
        run_expansion(START, additive_latency, first, steps=2, journal=SearchJournal(path), progress=quiet)
    saved = json.loads(path.read_text())
    finished = set(saved["evaluations"])
    assert len(finished) == 2 and START.hash in finished
    assert saved["steps"] == []
    assert len(saved["latencies"]) > 10

    lat_calls = []

    def lat(a):
        lat_calls.append(a.hash)
        return additive_latency(a)

    second = Counter()
    steps = run_expansion(START, lat, second, steps=2, journal=SearchJournal(path), progress=quiet)
    assert [s.to_dict() for s in steps] == [s.to_dict() for s in reference]
    assert not finished & set(second.calls)
    assert set(second.calls) | finished == set(json.loads(path.read_text())["evaluations"])
    assert not set(lat_calls) & set(saved["latencies"])  # step-1 latencies came from the journal

    # A third run replays both steps from the journal: nothing measured, nothing trained.
    third = Counter()
    steps3 = run_expansion(START, lambda a: pytest.fail("re-measured"), third, steps=2, journal=SearchJournal(path),
                           progress=quiet)
    assert third.calls == []
    assert [s.to_dict() for s in steps3] == [s.to_dict() for s in reference]
    doc = json.loads(path.read_text())
    assert [s["op"] for s in doc["steps"]] == [None, "width_s4-5", "depth_s2-5"]
    ev = doc["evaluations"][steps[1].arch.hash]["seeds"]["1000"]
    assert ev["weights"] == f"candidates/{steps[1].arch.hash}.keras" and ev["metrics"]["mIoU"] == 28.5
    assert not [p for p in tmp_path.iterdir() if p.name != "journal.json"]  # no temp files left


def test_resume_extends_a_finished_search(tmp_path):
    path = tmp_path / "j.json"
    run_expansion(START, additive_latency, concave_score, steps=2, journal=SearchJournal(path), progress=quiet)
    ev = Counter()
    steps = run_expansion(START, additive_latency, ev, steps=4, journal=SearchJournal(path), progress=quiet)
    assert trajectory(steps) == EXPECTED_TRAJECTORY[:5]
    # only steps 3 and 4 are trained: 9 candidates each (res_path3 an alias at step 4) and the parent
    assert len(ev.calls) == 10 + 10


def test_journal_mismatch_errors(tmp_path):
    path = tmp_path / "journal.json"
    run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path),
                  fingerprint=fingerprint({"proxy": 1}), progress=quiet)
    other = A((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (1, 0, 0))
    with pytest.raises(JournalError, match=r"journal\.json.*start arch"):
        run_expansion(other, additive_latency, concave_score, steps=1, journal=SearchJournal(path),
                      fingerprint=fingerprint({"proxy": 1}), progress=quiet)
    with pytest.raises(JournalError, match=r"journal\.json.*recipe fingerprint"):
        run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path),
                      fingerprint=fingerprint({"proxy": 2}), progress=quiet)
    with pytest.raises(JournalError, match=r"journal\.json.*expansion op set"):
        run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path),
                      ops=EXPANSION_OPS[:7], fingerprint=fingerprint({"proxy": 1}), progress=quiet)
    with pytest.raises(JournalError, match=r"journal\.json.*max_k"):
        run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path), max_k=4,
                      fingerprint=fingerprint({"proxy": 1}), progress=quiet)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(JournalError, match="bad.json"):
        SearchJournal(bad)
    bad.write_text('{"format": "something else"}')
    with pytest.raises(JournalError, match="bad.json.*not a search journal"):
        SearchJournal(bad)


def _damaged_journals(tmp_path) -> dict:
    """A real journal, then three ways it can be damaged on disk: {case: (path, words the error must say)}."""
    good = tmp_path / "good.json"
    run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(good), progress=quiet)
    text = good.read_text()
    cases = {}
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])  # what a full disk or a copy cut short leaves
    cases["truncated"] = (truncated, "not valid JSON")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    cases["binary"] = (binary, "not UTF-8 text")
    d = json.loads(text)
    key = next(iter(d["evaluations"]))
    d["evaluations"][key] = [0.5]  # valid JSON, wrong shape: used to be an AttributeError traceback later
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(d))
    cases["wrong structure"] = (wrong, f"evaluations['{key}']")
    d = json.loads(text)
    d["steps"] = [{"step": 0}]
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps(d))
    cases["step without arch"] = (steps, "steps[0]")
    d = json.loads(text)
    d["latency_devices"] = {"1": {"cpu": "zen4"}}  # a text per step, not an object
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps(d))
    cases["latency device not a text"] = (devices, "latency_devices['1']")
    d["latency_devices"] = ["tf on CPU"]
    devices_list = tmp_path / "devices_list.json"
    devices_list.write_text(json.dumps(d))
    cases["latency devices not an object"] = (devices_list, "'latency_devices'")
    return cases


def test_damaged_journal_is_one_error_naming_the_file(tmp_path):
    for case, (path, words) in _damaged_journals(tmp_path).items():
        with pytest.raises(JournalError) as info:
            SearchJournal(path)
        message = str(info.value)
        assert str(path) in message and words in message, (case, message)
        assert "\n" not in message, case


def test_expand_cli_on_a_damaged_journal_exits_2_in_one_line(tmp_path):
    path, words = _damaged_journals(tmp_path)["binary"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "journal.json").write_bytes(path.read_bytes())
    r = subprocess.run([sys.executable, "expand.py", "--recipe", "recipes/expand_synthetic.json", "--output", str(out),
                        "--latency-backend", "macs", "--set", f"data.root={tmp_path / 'syn'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-2000:])
    assert lines[0].startswith("expand.py: error: ") and str(out / "journal.json") in lines[0] and words in lines[0]


def paired_additive(parent, archs):
    return {parent.hash: (additive_latency(parent), 0.0), **{a.hash: (additive_latency(a), 0.25) for a in archs}}


def test_each_measuring_step_journals_where_its_latencies_were_measured(tmp_path):
    path = tmp_path / "journal.json"
    steps = run_expansion(START, additive_latency, concave_score, steps=2, latency_set_fn=paired_additive,
                          journal=SearchJournal(path), latency_device="X", progress=quiet)
    assert json.loads(path.read_text())["latency_devices"] == {"1": "X", "2": "X"}
    devices = SearchJournal(path).latency_device_map()
    assert devices == {1: "X", 2: "X"} and SearchJournal(path).latency_device(3) is None
    write_table(steps, tmp_path / "t.csv", tmp_path / "t.json", devices=devices)
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[4:7] == ["latency", "latency_se", "latency_device"]
    assert [r["latency_device"] for r in rows] == ["X", "X", "X"]  # step 0 is measured with step 1's set
    assert [r["latency_device"] for r in json.loads((tmp_path / "t.json").read_text())["rows"]] == ["X"] * 3
    write_table(steps, tmp_path / "u.csv", tmp_path / "u.json")  # no devices given: empty, not missing
    with open(tmp_path / "u.csv", newline="") as f:
        assert [r["latency_device"] for r in csv.DictReader(f)] == ["", "", ""]
    # A replay on another machine measures nothing, so the record stays; extending there names it for new steps.
    run_expansion(START, lambda a: pytest.fail("re-measured"), concave_score, steps=2,
                  latency_set_fn=lambda p, a: pytest.fail("re-measured"), journal=SearchJournal(path),
                  latency_device="Y", progress=quiet)
    assert SearchJournal(path).latency_device_map() == {1: "X", 2: "X"}
    run_expansion(START, additive_latency, concave_score, steps=3, latency_set_fn=paired_additive,
                  journal=SearchJournal(path), latency_device="Y", progress=quiet)
    assert SearchJournal(path).latency_device_map() == {1: "X", 2: "X", 3: "Y"}
    # No text given (computed latencies, a caller's latency_fn): nothing recorded.
    run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(tmp_path / "n.json"),
                  progress=quiet)
    assert json.loads((tmp_path / "n.json").read_text())["latency_devices"] == {}


def test_a_step_measured_on_two_machines_names_both(tmp_path):
    path = tmp_path / "journal.json"
    calls = []

    def killed(arch):
        calls.append(arch)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed while timing step 1")
        return additive_latency(arch)

    with pytest.raises(KeyboardInterrupt):
        run_expansion(START, killed, concave_score, steps=1, journal=SearchJournal(path), latency_device="X",
                      progress=quiet)
    assert SearchJournal(path).latency_device_map() == {1: "X"}
    run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path), latency_device="Y",
                  progress=quiet)
    assert SearchJournal(path).latency_device_map() == {1: "X + Y"}


def test_a_journal_without_latency_devices_loads(tmp_path):
    path = tmp_path / "journal.json"
    steps = run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path),
                          latency_device="X", progress=quiet)
    doc = json.loads(path.read_text())
    del doc["latency_devices"]  # written before the key existed: still version 3
    path.write_text(json.dumps(doc))
    journal = SearchJournal(path)
    assert journal.latency_device_map() == {} and journal.latency_device(1) is None
    again = run_expansion(START, additive_latency, concave_score, steps=1, journal=journal, latency_device="X",
                          progress=quiet)
    assert [s.to_dict() for s in again] == [s.to_dict() for s in steps]
    assert json.loads(path.read_text())["version"] == 3


def test_replay_detects_inconsistent_journal(tmp_path):
    path = tmp_path / "journal.json"
    steps = run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path),
                          progress=quiet)
    doc = json.loads(path.read_text())
    doc["evaluations"][steps[1].arch.hash]["seeds"]["1000"]["score"] = 0.0  # the chosen candidate now looks useless
    path.write_text(json.dumps(doc))
    with pytest.raises(JournalError, match="replaying step 1"):
        run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path), progress=quiet)


def test_bad_latency_value():
    with pytest.raises(SearchError, match="finite number"):
        run_expansion(START, lambda a: float("inf"), concave_score, steps=1, progress=quiet)


def test_progress_reports_steps_and_eta():
    lines = []
    run_expansion(START, additive_latency, concave_score, steps=1, progress=lines.append)
    text = "\n".join(lines)
    assert "step 1/1" in text and "ETA" in text and "chose width_s4-5" in text


# --------------------------------------------------------------------------- writers
def test_write_table(tmp_path):
    steps = run_expansion(START, additive_latency, concave_score, steps=3, progress=quiet)
    write_table(steps, tmp_path / "log.csv", tmp_path / "log.json")
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["B"] == "{1,1,1,1,1}" and rows[0]["C"] == "{4,8,16,32,32}" and rows[0]["R"] == "{1/2,0,0}"
    assert rows[2]["B"] == "{1,4,4,4,4}" and rows[3]["R"] == "{5/4,0,0}"
    assert [r["dimension"] for r in rows] == ["", "width", "depth", "resolution"]
    assert [float(r["latency"]) for r in rows] == [24.5, 32.5, 44.5, 56.5]
    assert [float(r["mIoU"]) for r in rows] == [20.5, 28.5, 34.5, 38.5]
    doc = json.loads((tmp_path / "log.json").read_text())
    assert doc["latency_unit"] == "ms"
    assert [r["op"] for r in doc["rows"]] == ["", "width_s4-5", "depth_s2-5", "res_path1"]
    assert Arch.from_dict(doc["rows"][3]["arch"]) == steps[3].arch
    assert doc["rows"][3]["target_latency"] == 56.0


@pytest.mark.parametrize("base_file", ["demo.json", "lps_s.json"])
def test_write_step_recipes_loadable(tmp_path, base_file):
    steps = run_expansion(START, additive_latency, concave_score, steps=2, progress=quiet)
    base = json.loads((REPO / "recipes" / base_file).read_text())
    base["name"] = "base"
    paths = write_step_recipes(base, steps, tmp_path / "expanded")
    assert [p.name for p in paths] == ["step_00.json", "step_01.json", "step_02.json"]
    for path, step in zip(paths, steps):
        recipe = load_recipe(path)
        assert recipe.arch() == step.arch.with_num_classes(recipe.arch().num_classes)
        assert recipe.name == f"base_step{step.index:02d}"
        assert recipe.model.preset is None
        assert recipe.data == load_recipe(REPO / "recipes" / base_file).data


def test_plot_expansion_png(tmp_path):
    steps = run_expansion(START, additive_latency, concave_score, steps=3, progress=quiet)
    png = tmp_path / "plot" / "expansion.png"
    plot_expansion(steps, None, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
    assert [p.name for p in png.parent.iterdir()] == ["expansion.png"]


def test_import_is_cheap():
    code = "import sys, lps_keras.search; print('tensorflow' in sys.modules, 'keras' in sys.modules, " \
           "'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


# --------------------------------------------------------------------------- seeds, margins, racing
class Noisy:
    """Known true means (``concave_score``) plus seeded Gaussian noise per (arch, seed); counts every call."""

    def __init__(self, sigma: float, fail_on: int | None = None):
        self.sigma = sigma
        self.calls: list[tuple[str, int]] = []
        self.fail_on = fail_on

    def __call__(self, arch: Arch, context: EvalContext):
        self.calls.append((arch.hash, context.seed))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("simulated interruption")
        rng = np.random.default_rng([int(arch.hash[:8], 16), context.seed])
        return {"score": concave_score(arch) + self.sigma * float(rng.normal()), "weights": f"w/{arch.hash}"}


def hand_margin(parent_scores, best, other, parent_latency, pooled_sd):
    """The margin of two slopes and its SE written out with numpy: pooled seed noise, the parent's P shared."""
    p = np.asarray(parent_scores, float)
    (lb, sb), (lo, so) = best, other
    sb, so = np.asarray(sb, float), np.asarray(so, float)
    db, do = lb - parent_latency, lo - parent_latency
    margin = (sb.mean() - p.mean()) / db - (so.mean() - p.mean()) / do
    var = (pooled_sd ** 2 * (1 / sb.size / db ** 2 + 1 / so.size / do ** 2)
           + pooled_sd ** 2 / p.size * (1 / db - 1 / do) ** 2)
    return margin, np.sqrt(var)


def journal_scores(path, arch, step):
    seeds = json.loads(path.read_text())["evaluations"][arch.hash]["seeds"]
    return [seeds[str(s)]["score"] for s in sorted(map(int, seeds)) if s // 1000 == step]


def test_seeds_are_fresh_per_step_and_steps_follow_the_t_rule(tmp_path):
    path = tmp_path / "journal.json"
    ev = Noisy(sigma=1.0)
    steps = run_expansion(START, additive_latency, ev, steps=3, seeds=3, journal=SearchJournal(path), progress=quiet)
    assert len(ev.calls) == len(set(ev.calls))
    doc = json.loads(path.read_text())
    assert doc["version"] == 3
    assert steps[0].scores == tuple(journal_scores(path, START, 1))  # the start's record: step 1's parent
    verdicts = []
    for t, (prev, step) in enumerate(zip(steps, steps[1:]), 1):
        # The parent is scored again at this step's seeds (1000 t + 0, 1, 2), not carried over.
        assert list(step.parent_scores) == journal_scores(path, prev.arch, t)
        if t > 1:
            assert set(step.parent_scores).isdisjoint(prev.scores)
        for c in step.candidates:
            assert list(c.scores) == journal_scores(path, c.arch, t)
        samples = [step.parent_scores] + [c.scores for c in step.candidates]
        df = sum(len(x) - 1 for x in samples)
        pooled = np.sqrt(sum((len(x) - 1) * np.var(x, ddof=1) for x in samples) / df)
        assert step.df == df == 3 * 2 * (len(step.candidates) + 1) // 3 and step.pooled_sd == pytest.approx(pooled)
        p = np.mean(step.parent_scores)
        gains = {c.op: np.mean(c.scores) - p for c in step.candidates}
        eligible = sorted((c for c in step.candidates if gains[c.op] > 0 and c.latency > prev.latency),
                          key=lambda c: gains[c.op] / (c.latency - prev.latency), reverse=True)
        assert [c.op for c in step.candidates if c.rank == "slope"] == [c.op for c in step.candidates
                                                                        if c in eligible]
        assert step.runner_up == eligible[1].op
        margin, se = hand_margin(step.parent_scores, (eligible[0].latency, eligible[0].scores),
                                 (eligible[1].latency, eligible[1].scores), prev.latency, pooled)
        assert step.margin == pytest.approx(margin) and step.margin_se == pytest.approx(se)
        assert step.quantile == pytest.approx(student_t_quantile(0.975, df))
        if margin > step.quantile * se:
            assert step.verdict == "decided" and step.op == eligible[0].op
        else:
            assert step.verdict in ("equivalent", "undecided")
        verdicts.append(step.verdict)
    assert "decided" in verdicts and set(verdicts) - {"decided"}  # sigma 1 makes both kinds of step
    assert [s.to_dict() for s in Step_roundtrip(steps)] == [s.to_dict() for s in steps]


def Step_roundtrip(steps):
    from lps_keras.search import Step

    return [Step.from_dict(json.loads(json.dumps(s.to_dict()))) for s in steps]


def test_the_parent_is_rescored_so_a_lucky_winner_does_not_bias_the_next_step():
    """Winner's curse: a network chosen because its seeds were lucky must not lend that luck to P next step."""
    lucky = {}

    def evaluate(arch, ctx):
        # Step 1: width_s4-5 gets a +5 lucky draw at its step-1 seeds only.
        bonus = 5.0 if ctx.step == 1 and ctx.op == "width_s4-5" else 0.0
        lucky.setdefault(ctx.step, []).append((ctx.op, ctx.seed))
        return concave_score(arch) + bonus + 0.01 * (ctx.seed % 1000)

    steps = run_expansion(START, additive_latency, evaluate, steps=2, seeds=2, progress=quiet)
    assert steps[1].op == "width_s4-5" and steps[1].score == pytest.approx(concave_score(steps[1].arch) + 5.005)
    # Step 2 measures its gains from the parent's fresh scores (no bonus), not from 5 points too high.
    assert np.mean(steps[2].parent_scores) == pytest.approx(concave_score(steps[1].arch) + 0.005)
    assert (None, step_seed(2, 0)) in lucky[2] and (None, step_seed(2, 1)) in lucky[2]


def test_no_gain_stops_the_expansion_with_that_verdict(tmp_path):
    def worse(arch, ctx):  # every expansion loses accuracy
        return 10.0 - 0.1 * (additive_latency(arch) - additive_latency(START)) + 0.01 * (ctx.seed % 1000)

    path = tmp_path / "journal.json"
    steps = run_expansion(START, additive_latency, worse, steps=3, seeds=2, journal=SearchJournal(path),
                          progress=quiet)
    assert len(steps) == 2 and steps[1].verdict == "no gain" and steps[1].op is None
    assert steps[1].arch == START and all(c.rank == "no gain" for c in steps[1].candidates)
    write_table(steps, tmp_path / "t.csv", tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["rows"][1]["decision"] == "no gain"
    assert [p.name for p in write_step_recipes(json.loads((REPO / "recipes" / "demo.json").read_text()), steps,
                                               tmp_path / "r")] == ["step_00.json"]


def test_paired_latencies_enter_the_verdict_and_the_journal(tmp_path):
    calls = []

    def latency_set(parent, archs):
        calls.append(len(archs))
        base = additive_latency(parent)
        return {parent.hash: (base, 0.0), **{a.hash: (additive_latency(a), 0.25) for a in archs}}

    path = tmp_path / "journal.json"
    steps = run_expansion(START, additive_latency, Noisy(sigma=0.5), steps=1, seeds=2, latency_set_fn=latency_set,
                          journal=SearchJournal(path), progress=quiet)
    # Paired rounds pick L_T and k (every N + d first, then N + (k+1) d of the ops below L_T), then the step's set.
    # res_path3 from one path is res_path2: the 10 ops give 9 distinct networks, each timed once.
    assert calls[0] == len(EXPANSION_OPS) - 1 and calls[-1] == len(steps[1].candidates)
    assert all(c.latency_se == 0.25 for c in steps[1].candidates)
    assert json.loads(path.read_text())["latency_sets"]["1"][steps[1].arch.hash] == [steps[1].latency, 0.25]
    # A replay takes the recorded set: nothing is measured again.
    again = run_expansion(START, additive_latency, Noisy(sigma=0.5), steps=1, seeds=2,
                          latency_set_fn=lambda p, a: pytest.fail("re-measured"), journal=SearchJournal(path),
                          progress=quiet)
    assert [s.to_dict() for s in again] == [s.to_dict() for s in steps]


def test_k_is_picked_from_paired_rounds_not_from_drifting_single_timings():
    """A machine that slows down between calls moves single timings, not the paired differences."""
    clock = iter(range(10_000))

    def drifting(arch):
        return additive_latency(arch) + 0.7 * next(clock)

    def latency_set(parent, archs):  # the drift is common to a round: the differences stay true
        d = 0.7 * next(clock)
        return {parent.hash: (additive_latency(parent) + d, 0.0), **{a.hash: (additive_latency(a) + d, 0.1)
                                                                     for a in archs}}

    def ks(steps):
        return {c.op: c.k for c in steps[1].candidates}

    clean = run_expansion(START, additive_latency, Counter(), steps=1, progress=quiet)
    paired = run_expansion(START, drifting, Counter(), steps=1, latency_set_fn=latency_set, progress=quiet)
    alone = run_expansion(START, drifting, Counter(), steps=1, progress=quiet)
    assert ks(paired) == ks(clean) == {"depth_s2-5": 3, "depth_s3-5": 4, "depth_s4-5": 6, "width_s1-5": 1,
                                       "width_s2-5": 1, "width_s3-5": 1, "width_s4-5": 1, "res_path1": 6,
                                       "res_path2": 6}  # res_path3 from one path is res_path2's alias
    assert ks(alone) != ks(clean)


def test_nearest_k_takes_the_smaller_of_two_k_the_latency_noise_does_not_separate():
    """Two measurements of the same op 30 minutes apart (hand-made): k = 5 and k = 6 straddle L_T = 11.5, each
    latency with SE 0.4. The bare argmin follows the noise (6, then 5); within 2 x sqrt(0.4^2 + 0.4^2) = 1.13
    of each other both runs take the smaller k."""
    first = {4: (8.1, 0.4), 5: (10.3, 0.4), 6: (12.2, 0.4)}  # |L - T|: 3.4, 1.2, 0.7
    second = {4: (8.4, 0.4), 5: (10.6, 0.4), 6: (12.6, 0.4)}  # 3.1, 0.9, 1.1
    bare = {k: (lat, 0.0) for k, (lat, _) in first.items()}
    assert nearest_k(bare, 11.5) == 6 and nearest_k({k: (v[0], 0.0) for k, v in second.items()}, 11.5) == 5
    assert nearest_k(first, 11.5) == nearest_k(second, 11.5) == 5
    # separated by more than the noise: the nearest k stays (1.2 - 0.7 = 0.5 > 2 x sqrt(2) x 0.1)
    assert nearest_k({k: (lat, 0.1) for k, (lat, _) in first.items()}, 11.5) == 6
    # the smaller k already nearest, or a tie: the smaller k, noise or not
    assert nearest_k({1: (8.0, 0.4), 2: (16.0, 0.4)}, 11.5) == 1
    assert nearest_k({5: (10.5, 0.0), 6: (12.5, 0.0)}, 11.5) == 5
    assert nearest_k(first, 11.5, z=0.5) == 6  # latency_z 0.5: 0.28 < 0.5


def test_k_from_paired_rounds_takes_the_smaller_k_within_latency_noise(tmp_path):
    """The additive model with paired SE 0.4 per network: the res ops' k = 6 (|12 - 11.5| = 0.5) and k = 5
    (|10 - 11.5| = 1.5) differ by 1.0 < 2 x sqrt(2) x 0.4 = 1.13, so k = 5; depth_s4-5 (+2 per k) likewise.
    depth_s3-5 (k = 4: 0.5, k = 3: 2.5) and depth_s2-5 (k = 3: 0.5, k = 2: 3.5) are separated and keep their k."""
    def paired(se):
        def latency_set(parent, archs):
            return {parent.hash: (additive_latency(parent), 0.0), **{a.hash: (additive_latency(a), se) for a in archs}}
        return latency_set

    def ks(steps):
        return {c.op: c.k for c in steps[1].candidates}

    clean = {"depth_s2-5": 3, "depth_s3-5": 4, "depth_s4-5": 6, "width_s1-5": 1, "width_s2-5": 1, "width_s3-5": 1,
             "width_s4-5": 1, "res_path1": 6, "res_path2": 6}
    assert ks(run_expansion(START, additive_latency, Counter(), steps=1, latency_set_fn=paired(0.1),
                            progress=quiet)) == clean
    path = tmp_path / "journal.json"
    noisy = run_expansion(START, additive_latency, Counter(), steps=1, latency_set_fn=paired(0.4),
                          journal=SearchJournal(path), progress=quiet)
    assert ks(noisy) == {**clean, "depth_s4-5": 5, "res_path1": 5, "res_path2": 5}
    # the SEs are journalled with the round latencies, so a replay picks the same k without measuring
    assert SearchJournal(path).latency_se(START.expand(EXPANSION_OPS_BY_NAME["res_path1"], 6)) == 0.4
    replay = run_expansion(START, lambda a: pytest.fail("re-measured"), Counter(), steps=1,
                           latency_set_fn=lambda p, a: pytest.fail("re-measured"), journal=SearchJournal(path),
                           progress=quiet)
    assert ks(replay) == ks(noisy)
    # latency_z 0 (decision.latency_z): the bare argmin
    z0 = run_expansion(START, additive_latency, Counter(), steps=1, latency_set_fn=paired(0.4), progress=quiet,
                       decision=DecisionConfig(latency_z=0.0))
    assert ks(z0) == clean


def test_rounds_time_only_the_ops_still_below_the_target():
    rounds = []

    def together(archs):
        rounds.append(len(archs))
        return [additive_latency(a) for a in archs]

    by_rounds = propose_candidates(START, EXPANSION_OPS, additive_latency, 16, latencies_fn=together)
    assert by_rounds == propose_candidates(START, EXPANSION_OPS, additive_latency, 16)
    # Round 1: all 10 ops. Below L_T = +11.5 after k: depth +4/+3/+2 (until k = 3, 4, 6), width_s2-5 +11,
    # width_s3-5 +10, width_s4-5 +8 (k = 2 reaches it), res ops +2 (until k = 6).
    assert rounds[0] == 10 and rounds[1] == 9 and sum(rounds) == 10 + 9 + 6 + 5 + 4 + 4


def test_racing_spends_seeds_only_on_contenders_and_the_parent():
    cfg = RacingConfig(enabled=True, max_seeds=8, budget=12, eta=2)
    ev = Noisy(sigma=1.0)
    search = Expansion(START, additive_latency, ev, seeds=2, racing=cfg, progress=quiet)
    steps = search.run(3)
    assert search.max_rounds == 3 and search.decision.looks == 4  # alpha split over 1 + 3 looks
    raced = [t for t in range(1, 4) if steps[t].racing_evaluations]
    assert raced
    for t in range(1, 4):
        step = steps[t]
        extra = {c.op: len(c.scores) - 2 for c in step.candidates if len(c.scores) > 2}
        parent_extra = len(step.parent_scores) - 2
        assert sum(extra.values()) + parent_extra == step.racing_evaluations <= cfg.budget
        assert all(len(c.scores) <= cfg.max_seeds for c in step.candidates)
        if t in raced:
            assert parent_extra > 0  # the parent is raced too
            # only candidates with a positive gain (eligible) got seeds; the others are no contenders
            assert all(c.rank in ("slope", "dominates") for c in step.candidates if c.op in extra)
            # A race that ends undecided stopped for want of budget or of seeds to give (the parent at max_seeds).
            if step.verdict == "undecided":
                assert step.racing_evaluations == cfg.budget or len(step.parent_scores) == cfg.max_seeds


def test_resume_during_racing_skips_finished_seeds(tmp_path):
    cfg = RacingConfig(enabled=True, max_seeds=6, budget=8, eta=2)
    reference = run_expansion(START, additive_latency, Noisy(sigma=1.0), steps=2, seeds=2, racing=cfg,
                              progress=quiet)
    n_total = sum(len(c.scores) for s in reference[1:] for c in s.candidates) + sum(
        len(s.parent_scores) for s in reference[1:])
    path = tmp_path / "journal.json"
    first = Noisy(sigma=1.0, fail_on=n_total - 3)  # killed late in step 2 (racing rounds or their seeds)
    with pytest.raises(RuntimeError, match="simulated"):
        run_expansion(START, additive_latency, first, steps=2, seeds=2, racing=cfg, journal=SearchJournal(path),
                      progress=quiet)
    second = Noisy(sigma=1.0)
    steps = run_expansion(START, additive_latency, second, steps=2, seeds=2, racing=cfg, journal=SearchJournal(path),
                          progress=quiet)
    assert not set(first.calls[:-1]) & set(second.calls)  # no (arch, seed) pair trained twice
    assert len(first.calls) - 1 + len(second.calls) == n_total
    assert [s.to_dict() for s in steps] == [s.to_dict() for s in reference]


def test_a_step_judged_otherwise_on_replay_is_refused_before_any_training(tmp_path):
    """A journal written under other decision rules (its step recorded without racing, the same scores now judged
    differently) is refused before racing trains anything."""
    path = tmp_path / "journal.json"
    cfg = RacingConfig(enabled=True, max_seeds=4, budget=6, eta=2)
    steps = run_expansion(START, additive_latency, Noisy(sigma=1.0), steps=1, seeds=3, racing=cfg,
                          journal=SearchJournal(path), progress=quiet)
    doc = json.loads(path.read_text())
    doc["steps"][1]["racing_evaluations"] = 0
    doc["steps"][1]["verdict"] = next(v for v in ("decided", "no gain") if v != steps[1].verdict)
    path.write_text(json.dumps(doc))

    def no_training(arch, ctx):
        raise AssertionError(f"trained {arch} seed {ctx.seed} while replaying")

    with pytest.raises(JournalError, match="other decision rules") as info:
        run_expansion(START, additive_latency, no_training, steps=1, seeds=3, racing=cfg,
                      journal=SearchJournal(path), progress=quiet)
    assert str(path) in str(info.value) and "step 1" in str(info.value)


@pytest.mark.parametrize("version", [1, 2])
def test_older_journals_are_refused_with_a_message(tmp_path, version):
    path = tmp_path / "journal.json"
    run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path), progress=quiet)
    doc = json.loads(path.read_text())
    doc["version"] = version
    path.write_text(json.dumps(doc))
    with pytest.raises(JournalError) as info:
        SearchJournal(path)
    message = str(info.value)
    assert str(path) in message and f"version {version}" in message and "new one (--output)" in message


def test_table_and_plot_show_seeds_margin_and_decision(tmp_path):
    from lps_keras.search import format_table

    steps = run_expansion(START, additive_latency, Noisy(sigma=1.0), steps=3, seeds=3, progress=quiet)
    write_table(steps, tmp_path / "log.csv", tmp_path / "log.json")
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["decision"] for r in rows] == [""] + [s.verdict for s in steps[1:]]  # 3 seeds: never "unknown"
    for r, s in zip(rows, steps):
        assert float(r["mIoU"]) == pytest.approx(np.mean(s.scores))
        assert float(r["mIoU_sd"]) == pytest.approx(np.std(s.scores, ddof=1)) and r["seeds"] == "3"
    assert float(rows[1]["margin"]) == pytest.approx(steps[1].margin) and rows[1]["runner_up"] == steps[1].runner_up
    # the pooled seed sd and the largest s_i^2 / s_p^2 over the step's networks, parent included (by hand)
    groups = [steps[1].parent_scores] + [c.scores for c in steps[1].candidates if c.scores]
    var = [np.var(g, ddof=1) for g in groups]
    sp2 = sum((len(g) - 1) * v for g, v in zip(groups, var)) / sum(len(g) - 1 for g in groups)
    assert float(rows[1]["pooled_sd"]) == pytest.approx(np.sqrt(sp2))
    assert float(rows[1]["heterogeneity"]) == pytest.approx(max(var) / sp2)
    assert json.loads((tmp_path / "log.json").read_text())["rows"][1]["heterogeneity"] == pytest.approx(max(var) / sp2)
    # one seed: the verdict is "unknown" (no noise estimate), the table's decision column says undecided
    one = run_expansion(START, additive_latency, concave_score, steps=1, seeds=1, progress=quiet)
    write_table(one, tmp_path / "one.csv", tmp_path / "one.json")
    with open(tmp_path / "one.csv", newline="") as f:
        assert one[1].verdict == "unknown" and list(csv.DictReader(f))[1]["decision"] == "undecided"
    doc = json.loads((tmp_path / "log.json").read_text())
    assert doc["rows"][2]["scores"] == list(steps[2].scores)
    text = format_table(steps)
    lines = text.splitlines()
    assert "mIoU (mean ± sd)" in lines[0] and "decision" in lines[0]
    assert f"{100 * steps[1].score:.2f} ± {100 * steps[1].score_sd:.2f}" in lines[3]
    assert f"| {steps[1].verdict}" in lines[3]
    # Single-seed runs: no sd, verdict unknown, written undecided.
    one = run_expansion(START, additive_latency, concave_score, steps=1, progress=quiet)
    # width_s4-5 slope 8/8 = 1 over width_s3-5 8.5/10 = 0.85 (see EXPECTED_TRAJECTORY): margin 0.15, no SE
    assert format_table(one).splitlines()[3].endswith("| 1 | 2050.00 | width (width_s4-5 x1) | 0.15 (vs width_s3-5) "
                                                      "| undecided |")
    assert "Latencies measured with" not in text
    assert format_table(one, devices={1: "tf on CPU:Zen x2; has avx2"}).splitlines()[-1] == \
        "Latencies measured with: tf on CPU:Zen x2; has avx2"
    png = tmp_path / "p.png"
    plot_expansion(steps, None, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table4_comparison_puts_each_step_beside_the_papers():
    from lps_keras.presets import get_preset
    from lps_keras.search import Step, table4_comparison

    n0 = get_preset("table4_step00", 11)
    s1 = get_preset("table4_step01", 11)  # the paper's step 1: depth_s4-5 x 7
    s2 = s1.expand(EXPANSION_OPS_BY_NAME["width_s1-5"], 1)  # the paper widened stages 2-5 instead
    history = [Step(index=0, arch=n0, latency=2.0, score=0.20),
               Step(index=1, arch=s1, latency=3.0, score=0.25, op="depth_s4-5", dimension="depth", k=7,
                    verdict="decided"),
               Step(index=2, arch=s2, latency=5.0, score=0.27, op="width_s1-5", dimension="width", k=1,
                    verdict="undecided")]
    lines = table4_comparison(history).splitlines()
    # Paper: N0 0.38 ms / 24.1; step 1 0.49 ms (x1.29) / 41.4 (+17.3); step 2 0.63 ms (x1.66) / 53.4 (+29.3).
    assert lines[2] == ("| 1 | depth_s4-5 × 7 | 3 (×1.50) | 25.0 (+5.0) | decided | depth_s4-5 × 7 | 0.49 (×1.29) "
                        "| 41.4 (+17.3) | yes |")
    assert lines[3] == ("| 2 | width_s1-5 × 1 | 5 (×2.50) | 27.0 (+7.0) | undecided | width_s2-5 × 1 | 0.63 (×1.66) "
                        "| 53.4 (+29.3) | same dimension |")
    assert lines[-1] == "Same op as the paper in 1 of 2 steps."
    lines = table4_comparison(history, devices={1: "A", 2: "B"}).splitlines()
    assert lines[-3:] == ["Same op as the paper in 1 of 2 steps.", "", "Latencies measured with: A; B"]
    other = Step(index=0, arch=get_preset("lps_s", 11), latency=1.0, score=0.3)
    assert table4_comparison([other]) is None  # not a search from N0: nothing to compare step by step


def test_full_disk_at_a_journal_write_is_one_line_and_keeps_the_journal(tmp_path, monkeypatch, capsys):
    from fake_disk import CappedDisk

    from lps_keras.cli import guarded
    from lps_keras.errors import DiskFullError

    path = tmp_path / "journal.json"
    run_expansion(START, additive_latency, concave_score, steps=1, journal=SearchJournal(path), progress=quiet)
    before = path.read_bytes()
    CappedDisk(free=100).install(monkeypatch)  # less than one journal
    with pytest.raises(DiskFullError, match="journal.json: the disk is full"):
        run_expansion(START, additive_latency, concave_score, steps=2, journal=SearchJournal(path), progress=quiet)
    code = guarded("expand.py", lambda: run_expansion(START, additive_latency, concave_score, steps=2,
                                                      journal=SearchJournal(path), progress=quiet))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and lines == [f"expand.py: error: {path}: the disk is full (no space left on device); "
                                   "nothing half-written was kept"]
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_op_names_must_be_plain_names(tmp_path):
    from lps_keras.errors import PathNameError

    bad = ExpansionOp(name="../d1", dimension="depth", depth=(1, 0, 0, 0, 0))
    with pytest.raises(PathNameError, match=r"expansion op name: '\.\./d1' is not a plain name"):
        run_expansion(START, additive_latency, concave_score, steps=1, ops=[bad], progress=quiet)
