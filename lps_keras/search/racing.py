"""Deciding a step above seed noise: per-candidate standard errors, the winner's margin, and racing.

Pure logic (no TensorFlow), used by :func:`lps_keras.search.algorithm.run_expansion`.

**Uncertainty.** Each candidate d is trained with n_d seeds; P_d is the mean of its scores and
SE_d = sd_d / sqrt(n_d) (sample sd, ddof 1). The parent's P (with SE_P) enters every slope
s_d = (P_d - P) / dL_d, dL_d = L_d - L, so for the winner b and the runner-up r

    margin    = s_b - s_r
    SE(margin)^2 = SE_b^2 / dL_b^2 + SE_r^2 / dL_r^2 + SE_P^2 * (1 / dL_b - 1 / dL_r)^2

(independent seeds; latencies are taken as exact). The step is *decided* when
margin > z * SE(margin) (``search.proxy.decision_z``, default 2), *undecided* when not, and
*unknown* (``decided = None``) when some SE cannot be estimated (a single seed). Candidates that
dominate N (L_d <= L, P_d > P) are compared by P_d instead of the slope.

**Racing** (``search.proxy.racing``): successive halving as in Hyperband (Li et al., 2018), with
extra seeds as the resource. While the step is not decided, the *contenders* (eligible candidates
not separated from the current winner by z standard errors, or without an SE yet) are ranked,
the best ceil(n / eta) of them (at least two) survive, and each survivor's seed count is raised
to eta times the largest count so far, capped by ``max_seeds``; the extra trainings of a step are
capped by ``budget``. It stops when the step is decided, no survivor can get another seed, or the
budget is spent. Hand-rolled rather than taken from a library: Ray Tune's and Optuna's
successive-halving schedulers prune *trials* that report intermediate values of one long run and
own the trial loop; here a handful of fixed candidates gain *independent seeds* through the
search's own resumable journal, and the stopping rule is the 2-SE margin, which neither provides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Optional


@dataclasses.dataclass(frozen=True)
class RacingConfig:
    """Successive-halving settings (mirrors ``search.proxy.racing`` of the recipe)."""

    enabled: bool = False
    max_seeds: int = 8  # no candidate gets more seeds than this
    budget: int = 24  # extra (candidate, seed) trainings per step, on top of the first round
    eta: int = 2  # keep the best 1/eta of the contenders, multiply their seeds by eta


def mean_sd_se(scores: Sequence[float]) -> tuple[float, Optional[float], Optional[float]]:
    """Mean, sample sd (ddof 1) and standard error of the mean; sd and se are None for one score."""
    n = len(scores)
    if n == 0:
        raise ValueError("mean_sd_se needs at least one score")
    mean = math.fsum(scores) / n
    if n == 1:
        return mean, None, None
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in scores) / (n - 1))
    return mean, sd, sd / math.sqrt(n)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The margin between the winner and the runner-up of a step (see the module docstring)."""

    runner_up: Optional[int]  # index of the runner-up among the candidates (None: a single eligible one)
    margin: Optional[float]  # winner's key minus runner-up's (slope, or P_d for dominating candidates)
    margin_se: Optional[float]
    decided: Optional[bool]  # None: not assessable (an SE is missing)


def _key_and_grad(c, parent_latency: float) -> tuple[str, float, float]:
    """(kind, key, d key / d P): the ranking key of an eligible candidate and its dependence on the parent's P."""
    if c.rank == "slope":
        d_lat = c.latency - parent_latency
        return "slope", c.slope, -1.0 / d_lat
    return "dominates", c.score, 0.0


def _own_weight(c, parent_latency: float) -> float:
    return 1.0 / (c.latency - parent_latency) if c.rank == "slope" else 1.0


def pair_margin(best, other, parent_latency: float, parent_se: Optional[float]) -> tuple[Optional[float],
                                                                                        Optional[float]]:
    """Margin of ``best`` over ``other`` (annotated candidates) and its SE; (None, None) across rank kinds."""
    kb, key_b, gb = _key_and_grad(best, parent_latency)
    ko, key_o, go = _key_and_grad(other, parent_latency)
    if kb != ko:
        return None, None  # a dominating winner vs a regular runner-up: no common scale
    margin = key_b - key_o
    if best.score_se is None or other.score_se is None or (parent_se is None and gb != go):
        return margin, None
    var = ((best.score_se * _own_weight(best, parent_latency)) ** 2
           + (other.score_se * _own_weight(other, parent_latency)) ** 2
           + ((parent_se or 0.0) * (gb - go)) ** 2)
    return margin, math.sqrt(var)


def _order(annotated) -> list[int]:
    """Eligible candidates best first, by the same keys as select_candidate."""
    keys = {}
    for i, c in enumerate(annotated):
        if c.rank == "slope":
            keys[i] = (1, c.slope, c.score, -c.latency, -i)
        elif c.rank == "dominates":
            keys[i] = (2, c.score, c.score, -c.latency, -i)
    return sorted(keys, key=lambda i: keys[i], reverse=True)


def decide(annotated, best: int, parent_latency: float, parent_se: Optional[float], z: float) -> Decision:
    """The margin of the winner ``best`` over the runner-up and whether it exceeds ``z`` standard errors."""
    order = [i for i in _order(annotated) if i != best]
    if not order:
        return Decision(runner_up=None, margin=None, margin_se=None, decided=True)
    r = order[0]
    margin, se = pair_margin(annotated[best], annotated[r], parent_latency, parent_se)
    if margin is None or se is None:
        return Decision(runner_up=r, margin=margin, margin_se=se, decided=None)
    return Decision(runner_up=r, margin=margin, margin_se=se, decided=margin > z * se)


def contenders(annotated, best: int, parent_latency: float, parent_se: Optional[float], z: float) -> list[int]:
    """The winner and every eligible candidate not separated from it by ``z`` SEs (best first)."""
    out = []
    for i in _order(annotated):
        if i == best:
            out.append(i)
            continue
        margin, se = pair_margin(annotated[best], annotated[i], parent_latency, parent_se)
        if margin is None or se is None or margin <= z * se:
            out.append(i)
    return out


def racing_round(annotated, best: int, seeds: Sequence[int], parent_latency: float, parent_se: Optional[float],
                 z: float, config: RacingConfig, budget_left: int) -> dict[int, int]:
    """One successive-halving round: ``{candidate index: new seed count}`` (empty: stop racing).

    ``seeds[i]`` is candidate i's current seed count. Survivors are the best ceil(n / eta) (at least
    two) of the contenders; each is raised to min(max_seeds, eta * max(seeds of survivors)). When the
    budget cannot pay the whole round, seeds are handed out one at a time in rank order (so the top
    contenders grow together) until it is spent.
    """
    if not config.enabled or budget_left <= 0:
        return {}
    pool = contenders(annotated, best, parent_latency, parent_se, z)
    if len(pool) < 2:
        return {}
    survivors = pool[: max(2, math.ceil(len(pool) / config.eta))]
    target = min(config.max_seeds, config.eta * max(seeds[i] for i in survivors))
    want = {i: seeds[i] for i in survivors}
    left = budget_left
    grew = True
    while left > 0 and grew:
        grew = False
        for i in survivors:
            if want[i] < target and left > 0:
                want[i] += 1
                left -= 1
                grew = True
    return {i: n for i, n in want.items() if n > seeds[i]}
