"""lps_keras.search.fidelity: a finished study's step comes back exactly (so new proxies train the reference's
networks, as benchmarks/proxy_fidelity.py --reference-json does), the reference row reads as a step, and the
rank agreement covers every candidate by raw slope against the parent as the step scored it."""

import json
import math
from pathlib import Path

import pytest

from lps_keras.recipe import load_recipe
from lps_keras.search import fidelity
from lps_keras.search.candidates import propose_candidates
from lps_keras.search.decision import DecisionConfig, RacingConfig, search_decision

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "docs" / "proxy_fidelity_camvid.json"


def test_a_finished_studys_step_is_reproduced_exactly():
    doc = json.loads(STUDY.read_text())
    recipe = load_recipe(REPO / doc["recipe"])
    start = recipe.arch()
    latency, ops = fidelity.fixed_latency(doc, start, recipe.search.max_k)
    _, cands = propose_candidates(start, ops, latency, recipe.search.max_k)
    ref = next(r for r in doc["proxies"] if r["proxy"] == "reference")
    assert [(c.op, c.k, c.latency) for c in cands] == [(c["op"], c["k"], c["latency"]) for c in ref["candidates"]]
    assert latency(start) == pytest.approx(fidelity.parent_latency_of(doc))
    step = fidelity.reference_step(doc, start)
    assert [c.arch.hash for c in step.candidates] == [c.arch.hash for c in cands]
    assert step.arch.hash == next(c.arch.hash for c in cands if c.op == ref["winner"])
    with pytest.raises(Exception, match="not a network of that study's step"):
        latency(start.expand(ops[0], recipe.search.max_k + 3))


def _cand(name, latency, scores, slope=None):
    from types import SimpleNamespace

    return SimpleNamespace(arch=SimpleNamespace(hash=name), latency=latency, scores=scores, slope=slope)


def test_tau_ranks_every_candidate_by_raw_slope_against_the_parent_at_the_steps_seeds():
    """Hand-made step: the parent re-scored at the step's seeds (P = 0.5, L = 1 ms) differs from the start
    network's own scores, and one candidate loses (the search's slope None); tau must rank all three by
    (P_d - P) / (L_d - L) with that P."""
    from types import SimpleNamespace

    start = SimpleNamespace(scores=(0.9, 0.9), latency=1.0)  # a wrong P: would flip the order
    a, b, c = _cand("a", 2.0, (0.7, 0.7)), _cand("b", 1.5, ()), _cand("c", 3.0, (0.4, 0.4))
    b.scores = (0.65, 0.65)  # raw slopes: b 0.15 / 0.5 = 0.3 > a 0.2 / 1 = 0.2 > c -0.1 / 2 = -0.05
    step = SimpleNamespace(candidates=[a, b, c], parent_scores=(0.5, 0.5), parent_latency=1.0)
    assert fidelity.raw_slopes(step.candidates, step.parent_scores, 1.0) == pytest.approx([0.2, 0.3, -0.05])
    ref = SimpleNamespace(candidates=[_cand("a", 0, (), 0.2), _cand("b", 0, (), 0.3), _cand("c", 0, (), -0.1)])
    taus = fidelity.tau_by_seed_count(start, step, ref, 2)
    assert taus[1]["mean"] == pytest.approx(1.0) and taus[2]["mean"] == pytest.approx(1.0)
    # every pair discordant: the proxy's order b > a > c against the reference's c > a > b
    reversed_ref = SimpleNamespace(candidates=[_cand("a", 0, (), 0.2), _cand("b", 0, (), 0.1),
                                               _cand("c", 0, (), 0.3)])
    assert fidelity.tau_by_seed_count(start, step, reversed_ref, 2)[2]["mean"] == pytest.approx(-1.0)


def test_summarize_ranks_every_scored_candidate_and_skips_a_failed_one():
    """A trained reference (its own parent scores), a candidate that failed (no scores) and one measured no
    slower than the parent that gains (ranked first, as a dominating candidate is)."""
    from types import SimpleNamespace

    start = SimpleNamespace(scores=(0.5, 0.5), latency=1.0)
    a, b = _cand("a", 2.0, (0.7, 0.7)), _cand("b", 1.5, (0.6, 0.6))  # raw slopes 0.2, 0.2 -> b ties a
    b.scores = (0.65, 0.65)                                           # b 0.3
    fast = _cand("fast", 0.9, (0.55, 0.55))                           # no slower, gains: +inf
    failed = _cand("failed", 3.0, ())
    for c, op in ((a, "a"), (b, "b"), (fast, "fast"), (failed, "failed")):
        c.op, c.k, c.score, c.score_sd = op, 1, (sum(c.scores) / len(c.scores) if c.scores else None), None
    step = SimpleNamespace(candidates=[a, b, fast, failed], parent_scores=(0.5, 0.5), parent_latency=1.0,
                           arch=b.arch, op="b", verdict="undecided")
    ref_cands = [_cand(n, lat, sc) for n, lat, sc in (("a", 2.0, (0.6,)), ("b", 1.5, (0.7,)), ("fast", 1.2, (0.9,)),
                                                        ("failed", 3.0, (0.55,)))]
    for c in ref_cands:
        c.score = c.scores[0]
    ref = SimpleNamespace(candidates=ref_cands, parent_scores=(0.5,), parent_latency=1.0, arch=b.arch)
    journal = SimpleNamespace(evaluations_of=lambda arch: {})
    row = fidelity.summarize("p", start, step, ref, 2, journal)
    # proxy order fast > b > a, reference (0.1/1, 0.2/0.5, 0.4/0.2) the same; the failed one is left out
    assert row["tau_slope"] == pytest.approx(1.0)
    assert row["picks_reference_winner"] is True and row["start_scores"] == [0.5, 0.5]
    assert fidelity.raw_slopes([fast], (0.5,), 1.0) == [math.inf]
    assert fidelity.raw_slopes([_cand("lose", 0.9, (0.4,))], (0.5,), 1.0) == [-math.inf]


def test_a_row_rescored_by_pixel_accuracy_gets_its_own_tau_against_the_reference():
    """The same runs read by another metric: scores replaced seed by seed, tau recomputed from them."""
    from types import SimpleNamespace

    from lps_keras.search.algorithm import step_seed

    acc = {"N": (0.50, 0.52), "a": (0.60, 0.58), "b": (0.51, 0.55)}  # pixel accuracy per seed

    def evaluations_of(arch):
        return {step_seed(1, i): SimpleNamespace(metrics={"pixel_accuracy": v}) for i, v in enumerate(acc[arch.hash])}

    a, b = _cand("a", 2.0, (0.3, 0.3)), _cand("b", 1.5, (0.2, 0.2))
    row = {"proxy": "p", "seeds": 2, "start_scores": [0.1, 0.1], "parent_latency": 1.0,
           "candidates": [{"op": "a", "latency": 2.0, "scores": [0.3, 0.3]},
                          {"op": "b", "latency": 1.5, "scores": [0.2, 0.2]}]}
    step = SimpleNamespace(candidates=[a, b])
    # reference slopes: b above a; by pixel accuracy a gains 0.08/1 = 0.08, b 0.02/0.5 = 0.04 -> a above b
    ref = SimpleNamespace(candidates=[_cand("a", 0, (), 0.1), _cand("b", 0, (), 0.2)])
    out = fidelity.rescored(row, step, SimpleNamespace(hash="N"), SimpleNamespace(evaluations_of=evaluations_of),
                            ref_step=ref)
    assert out["proxy"] == "p+pixel_accuracy" and out["start_scores"] == [0.50, 0.52]
    assert [c["scores"] for c in out["candidates"]] == [[0.60, 0.58], [0.51, 0.55]]
    assert out["tau_slope"] == pytest.approx(-1.0) and set(out["tau_slope_by_seeds"]) == {1, 2}


def test_the_regret_table_has_regret_verdict_shares_and_tau_for_every_seed_count():
    import itertools

    import numpy as np
    from scipy.stats import kendalltau

    from lps_keras.search.fidelity import regret_markdown, regret_report

    doc = json.loads((REPO / "docs" / "proxy_fidelity_camvid.json").read_text())
    decision, racing = search_decision(load_recipe(REPO / doc["recipe"], doc["overrides"]).search)
    report = regret_report(doc, decision, racing)
    row = next(r for r in report["rows"] if r["proxy"] == "scratch" and r["seeds"] == 2)
    # 2 of 3 seeds: 3 subsets, each picks width_s1-5 (the reference's best): regret 0
    assert row["subsets"] == 3 and row["regret_mean"] == 0 and row["choices"] == ["width_s1-5"]
    # tau: scipy's over the raw slopes of each 2-seed subset against the reference's, averaged (by hand)
    lat = fidelity.parent_latency_of(doc)
    proxy, ref = (next(p for p in doc["proxies"] if p["proxy"] == name) for name in ("scratch", "reference"))

    def slopes(p, subset):
        base = np.mean([p["start_scores"][i] for i in subset])
        return {c["op"]: (np.mean([c["scores"][i] for i in subset]) - base) / (c["latency"] - lat)
                for c in p["candidates"]}

    ref_slopes = slopes(ref, range(3))
    ops = sorted(ref_slopes)
    taus = [kendalltau([slopes(proxy, s)[o] for o in ops], [ref_slopes[o] for o in ops]).statistic
            for s in itertools.combinations(range(3), 2)]
    assert row["tau_slope"] == pytest.approx(np.mean(taus))
    # a study still in memory keys its seed counts by int, one read from JSON by str: the same column
    for p in doc["proxies"]:
        p["tau_slope_by_seeds"] = {int(k): v for k, v in p["tau_slope_by_seeds"].items()}
    assert next(r for r in regret_report(doc, decision, racing)["rows"] if r["proxy"] == "scratch"
                and r["seeds"] == 2)["tau_slope"] == pytest.approx(row["tau_slope"])
    assert sum(row["verdicts"].values()) == pytest.approx(1.0)
    header = regret_markdown(report).splitlines()[0]
    assert "regret mean" in header and "verdicts" in header and "τ of the slopes" in header


def _looks_study(latency_se=None):
    """A hand-made study: N0 and two candidates of the same dL 0.5, 3 seeds of sd 0.002 each. Proxy "p": a's
    slope beats b's by 0.00914 with SE 0.002 x sqrt(2/3) / 0.5 = 0.00327, t = 2.80; pooled df 6."""
    def cand(op, scores, latency=1.5):
        c = {"op": op, "latency": latency, "scores": scores}
        return c if latency_se is None else {**c, "latency_se": latency_se}

    spread = (-0.002, 0.0, 0.002)
    row = {"proxy": "p", "seeds": 3, "start_scores": [0.30 + d for d in spread], "parent_latency": 1.0,
           "candidates": [cand("a", [0.330 + d for d in spread]), cand("b", [0.32543 + d for d in spread])]}
    ref = {**row, "proxy": "reference", "candidates": [cand("a", [0.40] * 3), cand("b", [0.35] * 3)]}
    return {"proxies": [ref, row]}


def test_the_regret_replay_judges_by_the_searchs_rule_looks_included():
    """t = 2.80 clears t(0.975, 6) = 2.4469 (one look: decided) but not t(0.99, 6) = 3.1427, below the
    threshold of three looks, t(1 - 0.05 / 6, 6): the recipe's racing (2 -> 4 seeds) makes the search look
    three times, so its first look is undecided, and the report must say that, not the one-look verdict."""
    from lps_keras.search.fidelity import regret_markdown, regret_report

    doc = _looks_study()
    t = (0.330 - 0.32543) / 0.5 / (0.002 * math.sqrt(2 / 3) / 0.5)
    assert 2.4469 < t < 3.1427
    eps = DecisionConfig(epsilon=1e-4)  # no "equivalent" here: the looks alone decide
    one_look = regret_report(doc, eps, RacingConfig())
    racing = RacingConfig(enabled=True, max_seeds=4, budget=6, eta=2)
    three = regret_report(doc, eps, racing, source="hand-made")

    def verdicts(report, n):
        return next(r for r in report["rows"] if r["seeds"] == n)["verdicts"]

    assert verdicts(one_look, 3) == {"decided": 1.0} and verdicts(three, 3) == {"undecided": 1.0}
    # looks as the search counts them for a step that starts with n seeds: 1 + racing_rounds(n)
    assert three["decision"]["looks_by_seeds"] == {"1": 4, "2": 3, "3": 3}
    assert [r["looks"] for r in three["rows"]] == [4, 3, 3]
    assert three["decision"]["racing"]["max_seeds"] == 4 and three["decision"]["epsilon"] == 1e-4
    assert three["decision"]["latency_se"].startswith("0: the study stores one latency")
    text = regret_markdown(three)
    assert "search's rule (hand-made)" in text and "3 with 2 seeds" in text
    # the latency SE is used where the study has one: dL 0.5 +- 0.2 adds (G SE_dL / dL^2)^2 to each slope's
    # variance (0.024^2 and 0.020^2, far above the seeds' 0.0023^2), so even one look no longer decides
    with_se = regret_report(_looks_study(latency_se=0.2), eps, RacingConfig())
    assert with_se["decision"]["latency_se"] == "the study's (paired, or its profile's)"
    assert verdicts(with_se, 3) == {"undecided": 1.0}


def test_from_json_takes_the_decision_rule_from_the_studys_recipe(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("proxy_fidelity", REPO / "benchmarks" / "proxy_fidelity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    doc = {**_looks_study(), "recipe": "recipes/expand_camvid.json", "overrides": ["search.decision.epsilon=0.01"]}
    (tmp_path / "fidelity.json").write_text(json.dumps(doc))
    bench.run(bench.parse_args(["--from-json", str(tmp_path / "fidelity.json"), "--output", str(tmp_path / "o")]))
    report = json.loads((tmp_path / "o" / "regret.json").read_text())
    d = report["decision"]
    assert d["source"] == "recipes/expand_camvid.json --set search.decision.epsilon=0.01"
    assert d["epsilon"] == pytest.approx(1e-4) and d["racing"] == {"enabled": True, "max_seeds": 4, "budget": 6,
                                                                    "eta": 2}
    assert next(r for r in report["rows"] if r["seeds"] == 3)["verdicts"] == {"undecided": 1.0}


def test_study_latencies_measure_each_network_once_for_every_proxy_and_session(tmp_path):
    from lps_keras.arch import Arch
    from lps_keras.search.fidelity import StudyLatencies

    calls = []

    def measure(arch):  # a machine whose timings drift: every call is slower than the one before
        calls.append(arch)
        return 1.0 + 0.5 * len(calls)

    a = Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0, 0))
    b = Arch((1, 1, 1, 1, 1), (8, 16, 32, 64, 64), (0.5, 0, 0))
    first = StudyLatencies(tmp_path / "lat.json", measure, "openvino on CPU:A x2")
    assert [first(a), first(b), first(a)] == [1.5, 2.0, 1.5] and calls == [a, b]
    # a later session on another CPU kind reads the stored values: same candidate set for every proxy
    later = StudyLatencies(tmp_path / "lat.json", lambda arch: pytest.fail("measured again"), "openvino on CPU:B x2")
    assert [later(b), later(a)] == [2.0, 1.5]
    c = Arch((1, 1, 2, 2, 2), (4, 8, 16, 32, 32), (0.5, 0, 0))
    later.measure = lambda arch: 9.0
    assert later(c) == 9.0 and later.devices() == ["openvino on CPU:A x2", "openvino on CPU:B x2"]
