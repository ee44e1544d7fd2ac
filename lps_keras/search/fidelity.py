"""Proxy fidelity: how a short proxy's choice and ranking compare with a reference's, from finished steps.

The pure side of ``benchmarks/proxy_fidelity.py`` (which trains the proxies through the search's own code):
per proxy, the **regret** of its choice (the search's verdict replayed on every subset of its seeds,
:mod:`lps_keras.search.regret`; the figure to judge a proxy by) and, as secondary columns, Kendall tau-b of
every candidate's raw slope (P_d - P) / (L_d - L) against the reference's, whether it picks the reference's
winner, its verdict, seed sd and CPU minutes. A study's rows (``summarize``) are plain dicts, so a report can be
recomputed from a stored ``fidelity.json`` without training anything; ``fixed_latency`` and
``reference_step`` let new proxies be judged against a finished study's reference on exactly its networks.
No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math

from lps_keras.errors import UsageError


def kendall_tau(x, y):
    """Kendall's tau-b (the latency profile's, one implementation for the project), None when undefined
    (fewer than two candidates, or a constant ranking)."""
    from lps_keras.latency.profile import kendall_tau as tau_b

    tau = tau_b(x, y) if len(x) >= 2 else float("nan")
    return None if math.isnan(tau) else tau


def _parent(step, start):
    """The parent as the step scored it: its scores at the step's own seeds (the re-scored parent, or for a
    warm proxy the parent control trained the same extra iterations) and its latency; older steps without
    them fall back to the start network's."""
    scores = getattr(step, "parent_scores", None) or start.scores
    latency = getattr(step, "parent_latency", None)
    return list(scores), start.latency if latency is None else latency


def raw_slopes(cands, p_scores, p_latency, subset=None) -> list:
    """(P_d - P) / (L_d - L) of every candidate, from the mean over ``subset`` of the seeds (all by default).

    Unlike the search's own ``slope`` (None for a candidate that gains nothing or is dominated, since
    the verdict never picks those), this ranks every candidate, which is what a rank correlation needs."""
    import numpy as np

    idx = list(range(len(p_scores))) if subset is None else list(subset)
    p = float(np.mean([p_scores[i] for i in idx]))
    out = []
    for c in cands:
        gain, cost = float(np.mean([c.scores[i] for i in idx])) - p, c.latency - p_latency
        # No slower than the parent (measured latencies can say so): first if it gains, last if it does not.
        out.append(gain / cost if cost > 0 else (math.inf if gain > 0 else -math.inf))
    return out


def reference_slopes(ref_step, start) -> dict:
    """arch hash -> the reference's raw slope: computed from its runs when it was trained here, the stored
    slope of a finished study's reference (``--reference-json``; stored for every candidate)."""
    if hasattr(ref_step, "parent_scores"):
        p_scores, p_latency = _parent(ref_step, start)
        cands = [c for c in ref_step.candidates if len(c.scores) >= len(p_scores)]
        return {c.arch.hash: s for c, s in zip(cands, raw_slopes(cands, p_scores, p_latency))}
    return {c.arch.hash: c.slope for c in ref_step.candidates if c.slope is not None}


def tau_by_seed_count(start, step, ref_step, seeds) -> dict:
    """Slope tau against the reference when only ``s`` of the proxy's seeds are used, for s = 1 .. seeds.

    For each subset of ``s`` seeds (the same subset for the parent, whose score P enters every slope),
    P_d and P are the subset's means; reported: mean, min and max tau over the subsets. This is the
    accuracy-for-CPU trade-off of a proxy with fewer seeds, from the same runs.
    """
    import itertools

    import numpy as np

    ref = reference_slopes(ref_step, start)
    p_scores, p_latency = _parent(step, start)
    cands = [c for c in step.candidates if c.arch.hash in ref and len(c.scores) >= seeds]
    out = {}
    n = min(seeds, len(p_scores))
    for s in range(1, n + 1):
        taus = []
        for subset in itertools.combinations(range(n), s):
            tau = kendall_tau(raw_slopes(cands, p_scores, p_latency, subset), [ref[c.arch.hash] for c in cands])
            if tau is not None:
                taus.append(tau)
        if taus:
            out[s] = {"mean": float(np.mean(taus)), "min": float(min(taus)), "max": float(max(taus)),
                      "subsets": len(taus)}
    return out


def summarize(name, start, step, ref_step, seeds, journal) -> dict:
    import numpy as np

    cands = {c.arch.hash: c for c in step.candidates}
    ref = {c.arch.hash: c for c in ref_step.candidates}
    keys = [h for h in ref if h in cands]
    ref_slopes = reference_slopes(ref_step, start)
    p_scores, p_latency = _parent(step, start)
    # a failed candidate has no scores: it is not ranked
    ranked = [h for h in keys if h in ref_slopes and len(cands[h].scores) >= len(p_scores)]
    slopes = raw_slopes([cands[h] for h in ranked], p_scores, p_latency)
    scored = [h for h in keys if cands[h].score is not None and ref[h].score is not None]
    # Every (candidate, seed) run's CPU time, from the journal (a run resumed after a kill counts only its
    # last part: rerun such a study from scratch for timings).
    # A run found already finished (fit_seconds 0: trained by another process into the same directory) is
    # left out of the timing.
    cpu = [e.metrics.get("cpu_seconds") for c in step.candidates for e in journal.evaluations_of(c.arch).values()
           if e.metrics.get("fit_seconds") != 0]
    cpu = [x for x in cpu if x is not None]
    sds = [c.score_sd for c in step.candidates if c.score_sd is not None]
    cpu_pair = float(np.mean(cpu)) / 60 if cpu else None
    return {
        "proxy": name,
        "seeds": seeds,
        # over every candidate, by raw slope (the search's own slope is None where it gains nothing)
        "tau_slope": kendall_tau(slopes, [ref_slopes[h] for h in ranked]),
        "tau_score": kendall_tau([cands[h].score for h in scored], [ref[h].score for h in scored]),
        "picks_reference_winner": step.arch.hash == ref_step.arch.hash,
        "winner": step.op,
        "decision": step.verdict,
        "mean_seed_sd": float(np.mean(sds)) if sds else None,
        "cpu_minutes_per_candidate_seed": cpu_pair,
        "cpu_minutes_per_candidate": None if cpu_pair is None else cpu_pair * seeds,
        "tau_slope_by_seeds": tau_by_seed_count(start, step, ref_step, seeds),
        "start_scores": p_scores,  # the parent at this step's seeds
        "parent_latency": p_latency,
        "candidates": [{"op": c.op, "k": c.k, "latency": c.latency, "score": c.score, "sd": c.score_sd,
                        "slope": c.slope, "scores": list(c.scores)} for c in step.candidates],
    }


def with_profile_se(rows, sigma_rel: float) -> None:
    """Give each row's candidates the SE a search on a latency profile gives them (in place): sigma_rel x the
    step's largest dL (:mod:`lps_keras.search.latencies`), so the regret replay judges as that search would."""
    from lps_keras.search.latencies import profile_dl_se

    for row in rows:
        if row.get("parent_latency") is None:
            continue
        se = profile_dl_se(sigma_rel, row["parent_latency"], [c["latency"] for c in row["candidates"]])
        for c in row["candidates"]:
            c["latency_se"] = se


def scored_step(row: dict, parent_latency: float):
    """A fidelity row as (parent, candidates) of :class:`lps_keras.search.regret.Scored`; a candidate's
    ``latency_se`` (SE of its paired difference to the parent) where the row has one, else 0."""
    from lps_keras.search.regret import Scored

    parent = Scored("N", parent_latency, tuple(row["start_scores"]))
    return parent, [Scored(c["op"], c["latency"], tuple(c["scores"]), float(c.get("latency_se") or 0.0))
                    for c in row["candidates"]]


def parent_latency_of(doc: dict) -> float:
    """The parent's latency of a study; studies written before it was stored: recovered from the reference's
    recorded slopes (L = L_d - (P_d - P) / s_d, the same for every candidate)."""
    import numpy as np

    ref = next(r for r in doc["proxies"] if r["proxy"] == "reference")
    if ref.get("parent_latency") is not None:
        return ref["parent_latency"]
    p = float(np.mean(ref["start_scores"]))
    values = [c["latency"] - (float(np.mean(c["scores"])) - p) / c["slope"] for c in ref["candidates"] if c["slope"]]
    return float(np.median(values))


def regret_report(doc: dict, decision, racing, source: str = "") -> dict:
    """Per proxy and seed count: the search's verdict replayed on every seed subset, its regret against the
    reference (mean and worst), the verdicts' shares; the random pick's regret and the reference's own
    reproducibility (each of its seeds alone judged by the others).

    ``decision`` / ``racing`` (:class:`~lps_keras.search.decision.DecisionConfig` / ``RacingConfig``, from the
    study's recipe by :func:`~lps_keras.search.decision.search_decision`) are the search's: a row of n seeds is
    judged with the looks of a search of n seeds (``with_looks``), as that search's first look would be. The
    config used is recorded in the report (``decision``, ``source`` naming where it came from).
    """
    from lps_keras.search.decision import with_looks
    from lps_keras.search.regret import random_pick_regret, self_regret, slopes, subset_regrets, summary

    lat = parent_latency_of(doc)
    ref_row = next(r for r in doc["proxies"] if r["proxy"] == "reference")
    ref_parent, ref_cands = scored_step(ref_row, lat)
    reference = slopes(ref_parent, ref_cands)
    own = self_regret(ref_parent, ref_cands, with_looks(decision, 1, racing))
    rows, looks = [], {}
    for row in doc["proxies"]:
        if row["proxy"] == "reference":
            continue
        parent, cands = scored_step(row, lat)
        for n in range(1, row["seeds"] + 1):
            config = with_looks(decision, n, racing)
            looks[n] = config.looks
            s = summary(subset_regrets(parent, cands, reference, n, config))
            cpu = row.get("cpu_minutes_per_candidate_seed")
            by_seeds = row.get("tau_slope_by_seeds") or {}  # int keys in memory, str once read from JSON
            tau = (by_seeds.get(n) or by_seeds.get(str(n)) or {}).get("mean")  # over the same subsets
            rows.append({"proxy": row["proxy"], "seeds": n, **s, "cpu_minutes_per_candidate": None if cpu is None
                         else cpu * n, "tau_slope": tau, "looks": config.looks})
    best = max(reference, key=reference.get)
    has_se = any(c.get("latency_se") for r in doc["proxies"] for c in r["candidates"])
    return {"parent_latency": lat, "reference_best": best, "reference_slopes": reference,
            "random_pick_regret": random_pick_regret(reference),
            "reference_self_regret": {"mean": sum(own) / len(own), "worst": max(own), "per_seed": own} if own else None,
            "decision": {"source": source, "alpha": decision.alpha, "epsilon": decision.epsilon,
                         "latency_z": decision.latency_z, "racing": dataclasses.asdict(racing),
                         "looks_by_seeds": {str(n): k for n, k in sorted(looks.items())},
                         "latency_se": "the study's (paired, or its profile's)" if has_se else
                         "0: the study stores one latency per network and no SE, so latencies count as exact"},
            "rows": rows}


def regret_markdown(report: dict) -> str:
    def f(x, fmt=".0%"):
        return "-" if x is None else format(x, fmt)

    lines = ["| proxy | seeds | regret mean | regret worst | verdicts | choices | CPU min / candidate | "
             "τ of the slopes |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        verdicts = ", ".join(f"{k} {v:.0%}" for k, v in r["verdicts"].items())
        lines.append(f"| {r['proxy']} | {r['seeds']} | {f(r['regret_mean'])} | {f(r['regret_worst'])} | {verdicts} "
                     f"| {', '.join(r['choices'])} | {f(r['cpu_minutes_per_candidate'], '.2f')} "
                     f"| {f(r.get('tau_slope'), '.2f')} |")
    own = report["reference_self_regret"]
    lines += ["", f"Reference's best: {report['reference_best']}. A random pick: regret "
              f"{report['random_pick_regret']:.0%}. The reference's own reproducibility (each of its seeds alone, "
              "judged by the others): " + (f"regret {own['mean']:.0%} mean, {own['worst']:.0%} worst." if own
                                           else "not known (the reference has one seed).")]
    d = report.get("decision")
    if d:
        looks = ", ".join(f"{k} with {n} seed{'s' if n != '1' else ''}" for n, k in d["looks_by_seeds"].items())
        lines += ["", f"Verdicts by the search's rule ({d['source'] or 'given config'}): alpha {d['alpha']:g} "
                  f"split over its looks ({looks}: 1 + racing's rounds for a step that starts with that many "
                  f"seeds; the replay is that first look, it does not race), epsilon {100 * d['epsilon']:g} "
                  f"points, latency_z {d['latency_z']:g}; latency SE {d['latency_se']}."]
    return "\n".join(lines)


def _winner(row) -> str:
    if row["picks_reference_winner"] is None:
        return "- (see the regret table)"
    return f"{'yes' if row['picks_reference_winner'] else 'no'} ({row['winner']})"


def fidelity_markdown(rows) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    # The study's own one-step search judges once, with all its seeds, by the default decision rule and without
    # racing; regret.md replays the recipe's rule, looks included: the verdict to read is there.
    lines = ["| proxy | seeds | tau (slope) | tau (mIoU) | reference winner | decision (one look, default rule; "
             "regret.md has the search's) | mean seed sd | CPU min / candidate |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['proxy']} | {r['seeds']} | {f(r['tau_slope'], '.2f')} | {f(r['tau_score'], '.2f')} | "
                     f"{_winner(r)} | {r['decision'] or '-'} | "
                     f"{f(None if r['mean_seed_sd'] is None else 100 * r['mean_seed_sd'], '.2f')} | "
                     f"{f(r['cpu_minutes_per_candidate'], '.2f')} |")
    lines += ["", "Slope tau against the reference with fewer seeds (mean [min, max] over the seed subsets; "
              "CPU minutes per candidate for that many seeds):", "",
              "| proxy | seeds used | tau (slope) | CPU min / candidate |", "|---|---|---|---|"]
    for r in rows:
        if r["proxy"] == "reference":
            continue
        for s, t in r["tau_slope_by_seeds"].items():
            cpu = None if r["cpu_minutes_per_candidate_seed"] is None else r["cpu_minutes_per_candidate_seed"] * int(s)
            lines.append(f"| {r['proxy']} | {s} | {t['mean']:.2f} [{t['min']:.2f}, {t['max']:.2f}] | {f(cpu, '.2f')} |")
    return "\n".join(lines)


class StudyLatencies:
    """One latency per network for a whole study, kept in ``path`` (JSON, written atomically after each new one).

    Every proxy of a study runs its own one-step search, and each search picks L_T and each op's k from
    the latencies it is given; measured afresh, noise (or a resumed study on another CPU kind, which misses
    a device-keyed latency cache) would give each proxy its own candidate set, and the regret report, which
    matches candidates by op, would compare different networks. Here a network is measured once (by
    ``measure``, on ``device``), and every proxy, in every session, reads that value, so all proxies see
    one candidate set. ``devices()`` says where the stored latencies were measured.
    """

    def __init__(self, path, measure, device: str | None):
        import json
        from pathlib import Path

        self.path = Path(path)
        self.measure = measure
        self.device = device
        self.table = json.loads(self.path.read_text()) if self.path.exists() else {}

    def __call__(self, arch) -> float:
        from lps_keras.fileio import atomic_write_json

        key = arch.hash
        if key not in self.table:
            self.table[key] = {"arch": str(arch), "ms": float(self.measure(arch)), "device": self.device}
            atomic_write_json(self.path, self.table)
        return self.table[key]["ms"]

    def devices(self) -> list:
        return sorted({str(v.get("device")) for v in self.table.values()})


def fixed_latency(doc: dict, start, max_k: int):
    """``(latency_fn, ops)`` reproducing a finished study's step: N0 and its candidates N0 + k_d d get the
    recorded latencies; the other multiples of an op get values that make the search's k rule pick the
    recorded k again (far below the target before it, far above after it)."""
    from lps_keras.arch import EXPANSION_OPS_BY_NAME, ArchError

    ref = next(r for r in doc["proxies"] if r["proxy"] == "reference")
    lat0 = parent_latency_of(doc)
    table, exact = {start.hash: lat0}, {}
    for c in ref["candidates"]:
        op = EXPANSION_OPS_BY_NAME[c["op"]]
        for j in range(1, max(max_k, c["k"]) + 2):
            try:
                arch = start.expand(op, j)
            except ArchError:
                break
            if j == c["k"]:
                exact[arch.hash] = c["latency"]
            else:
                table.setdefault(arch.hash, lat0 + 1e-3 * j if j < c["k"] else 1e6)
    table.update(exact)

    def latency(arch):
        if arch.hash not in table:
            raise UsageError(f"--reference-json: {arch} is not a network of that study's step")
        return table[arch.hash]

    return latency, [EXPANSION_OPS_BY_NAME[c["op"]] for c in ref["candidates"]]


def reference_step(doc: dict, start):
    """The reference row of a finished study as the step object :func:`summarize` reads."""
    from types import SimpleNamespace

    from lps_keras.arch import EXPANSION_OPS_BY_NAME

    ref = next(r for r in doc["proxies"] if r["proxy"] == "reference")
    cands = [SimpleNamespace(arch=start.expand(EXPANSION_OPS_BY_NAME[c["op"]], c["k"]), slope=c["slope"],
                             score=c["score"]) for c in ref["candidates"]]
    winner = next(c.arch for c, r in zip(cands, ref["candidates"]) if r["op"] == ref["winner"])
    return SimpleNamespace(candidates=cands, arch=winner)


def rescored(row: dict, step, start_arch, journal, metric: str = "pixel_accuracy", ref_step=None) -> dict:
    """A proxy's row scored by another metric of the same runs (no training): every seed's ``metric``; with
    ``ref_step``, its slope tau against the reference's (mIoU) slopes, over all seeds and by seed count."""
    from types import SimpleNamespace

    from lps_keras.search.algorithm import step_seed

    def scores(arch, n):
        have = journal.evaluations_of(arch)
        return [have[step_seed(1, i)].metrics.get(metric) for i in range(n)]

    out = {**row, "proxy": f"{row['proxy']}+{metric}", "start_scores": scores(start_arch, len(row["start_scores"]))}
    out["candidates"] = [{**c, "scores": scores(sc.arch, len(c["scores"]))}
                         for c, sc in zip(row["candidates"], step.candidates)]
    if any(v is None for c in [{"scores": out["start_scores"]}, *out["candidates"]] for v in c["scores"]):
        return None  # runs from before the metric was kept
    for key in ("tau_slope", "tau_score", "picks_reference_winner", "winner", "decision", "mean_seed_sd",
                "tau_slope_by_seeds"):
        out[key] = None  # by mIoU in the row it came from; the regret report judges the new scores
    out["tau_slope_by_seeds"] = {}
    if ref_step is not None:
        as_step = SimpleNamespace(
            parent_scores=out["start_scores"], parent_latency=row["parent_latency"],
            candidates=[SimpleNamespace(arch=sc.arch, latency=c["latency"], scores=c["scores"])
                        for c, sc in zip(out["candidates"], step.candidates)])
        start = SimpleNamespace(scores=out["start_scores"], latency=row["parent_latency"])
        out["tau_slope_by_seeds"] = tau_by_seed_count(start, as_step, ref_step, row["seeds"])
        full = out["tau_slope_by_seeds"].get(row["seeds"])
        out["tau_slope"] = None if full is None else full["mean"]
    return out
