"""Regret: how much a proxy's choice costs, judged against a reference. Pure, no TensorFlow.

A step does not need a ranking of all its candidates, it needs a choice that costs little. With reference
slopes s_d = (P_d - P) / (L_d - L) (a longer, many-seed training of the same candidates), the **regret** of
choosing d is (max_d s_d - s_chosen) / max_d s_d: 0 when the proxy picks the reference's best, 1 when it picks
something worth nothing (or keeps the parent: a "no gain" verdict gains nothing). Kendall's tau over all
candidates is a poor figure for this: with nine candidates even a perfect proxy's tau stays far from 1 under
the reference's own noise, while the choice, which is what the search uses, can be right every time.

:func:`subset_regrets` replays the search's own verdict (:func:`lps_keras.search.decision.judge`) on every
subset of ``n`` of a proxy's seeds (the parent's scores at the same seeds), so one set of trainings says what
1, 2, ... seeds would have cost. The caller passes the search's decision config for a step of ``n`` seeds
(:func:`lps_keras.search.decision.search_decision` and ``with_looks``: alpha split over 1 + racing's rounds),
so the replay judges by the rule the search would apply at its first look; it does not race.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Optional

from lps_keras.search.decision import Arm, DecisionConfig, judge


@dataclasses.dataclass(frozen=True)
class Scored:
    """One network of a step as a proxy (or the reference) saw it: latency and one score per seed."""

    name: str
    latency: float
    scores: tuple
    latency_se: float = 0.0  # SE of its latency difference to the parent (0: treated as exact)


def slopes(parent: Scored, candidates: Sequence[Scored]) -> dict[str, float]:
    """Mean-based slopes (P_d - P) / (L_d - L) of the candidates slower than the parent."""
    p = math.fsum(parent.scores) / len(parent.scores)
    return {c.name: (math.fsum(c.scores) / len(c.scores) - p) / (c.latency - parent.latency)
            for c in candidates if c.latency > parent.latency}


def regret(chosen: Optional[str], reference: Mapping[str, float]) -> float:
    """(best reference slope - the chosen one's) / best; ``chosen`` None (no gain: the parent kept) counts 0."""
    best = max(reference.values())
    if chosen is not None and chosen not in reference:
        raise ValueError(f"regret: {chosen!r} has no reference slope (known: {', '.join(reference)})")
    if best <= 0:
        raise ValueError(f"regret needs a reference in which some candidate gains (best slope {best!r})")
    return (best - (0.0 if chosen is None else reference[chosen])) / best


@dataclasses.dataclass(frozen=True)
class SubsetChoice:
    seeds: tuple  # indices of the seeds used
    verdict: str
    chosen: Optional[str]
    regret: float


def subset_regrets(parent: Scored, candidates: Sequence[Scored], reference: Mapping[str, float], n: int,
                   config: DecisionConfig) -> list[SubsetChoice]:
    """The search's verdict (by ``config``, the search's own for ``n`` seeds) and its regret on every subset of
    ``n`` seed indices (parent and candidates alike)."""
    seeds = min(len(parent.scores), *(len(c.scores) for c in candidates))
    if not 1 <= n <= seeds:
        raise ValueError(f"n must be in [1, {seeds}], got {n!r}")
    out = []
    for subset in itertools.combinations(range(seeds), n):
        arms = [Arm(c.name, tuple(c.scores[i] for i in subset), c.latency, c.latency_se) for c in candidates]
        v = judge(Arm(parent.name, tuple(parent.scores[i] for i in subset), parent.latency), arms, config)
        chosen = None if v.chosen is None else candidates[v.chosen].name
        out.append(SubsetChoice(subset, v.kind, chosen, regret(chosen, reference)))
    return out


def summary(choices: Sequence[SubsetChoice]) -> dict:
    """Mean and worst regret over the subsets and the share of each verdict."""
    regrets = [c.regret for c in choices]
    kinds = {}
    for c in choices:
        kinds[c.verdict] = kinds.get(c.verdict, 0) + 1
    return {"subsets": len(choices), "regret_mean": math.fsum(regrets) / len(regrets), "regret_worst": max(regrets),
            "verdicts": {k: v / len(choices) for k, v in sorted(kinds.items())},
            "choices": sorted({c.chosen or "(no gain)" for c in choices})}


def random_pick_regret(reference: Mapping[str, float]) -> float:
    """The expected regret of picking one candidate at random: the floor a proxy must beat."""
    return math.fsum(regret(name, reference) for name in reference) / len(reference)


def self_regret(parent: Scored, candidates: Sequence[Scored], config: DecisionConfig) -> list[float]:
    """The reference's own reproducibility: for each of its seeds, the regret of the choice made on that seed
    alone (by ``config``, the search's for one seed), judged by the slopes of its other seeds; empty for a
    reference with one seed (nothing to judge it by)."""
    seeds = min(len(parent.scores), *(len(c.scores) for c in candidates))
    if seeds < 2:
        return []
    out = []
    for i in range(seeds):
        rest = [j for j in range(seeds) if j != i]

        def pick(idx, s):
            return Scored(s.name, s.latency, tuple(s.scores[j] for j in idx), s.latency_se)

        others = slopes(pick(rest, parent), [pick(rest, c) for c in candidates])
        v = judge(Arm(parent.name, (parent.scores[i],), parent.latency),
                  [Arm(c.name, (c.scores[i],), c.latency, c.latency_se) for c in candidates], config)
        out.append(regret(None if v.chosen is None else candidates[v.chosen].name, others))
    return out
