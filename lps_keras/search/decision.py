"""The verdict of one expansion step: which candidate to take, and how sure that is. Pure, no TensorFlow.

Inputs: the parent and each candidate as an :class:`Arm` (its proxy scores at this step's seeds, its
median latency and the standard error of its latency *difference* to the parent, from paired
measurement). Output: a :class:`Verdict`, one of

``decided``      the winner beats the runner-up by more than the t-quantile times the margin's SE (a lone
                 candidate with a positive gain: its gain over the parent is that significant);
``equivalent``   taking the cheapest contender (the candidates not separated from the winner) would cost
                 less than ``epsilon`` of gain: the upper confidence bound of its regret, max over the
                 other contenders j of UCB(s_j - s_cheapest), times the winner's latency increase. That
                 one is taken, and the verdict says so;
``no gain``      no candidate improves on the parent (a step of its own: never an argmax of negative
                 slopes, and a candidate worse on both axes is never taken);
``undecided``    none of the above (racing may add seeds; if its budget is spent, the step says so);
``unknown``      the noise cannot be estimated (one seed everywhere): the plain argmax is taken.

Rules, each against a defect of the plain argmax (P_d - P) / (L_d - L):

* **Negative gains.** Dividing a loss by a larger latency increase brings it closer to zero, so the
  argmax would prefer the candidate that loses more *and* costs more. Only candidates with a
  positive gain are ranked; if there are none the verdict is ``no gain``.
* **Latency noise is not dominance.** |dL| within ``latency_z`` standard errors of the paired
  difference is "the same latency": such a candidate (or a faster one) is taken over the slope
  ranking only if its gain is significant, else it is left out. Its slope would explode on noise.
* **Winner's curse.** P is the parent's mean *at this step's seeds* (the parent is scored again with
  the candidates), not the previous step's maximum (the caller's job: :mod:`lps_keras.search.algorithm`).
* **Degrees of freedom.** The seed noise is pooled across the step's networks (same proxy):
  s_p^2 = sum (n_i - 1) s_i^2 / sum (n_i - 1) with df = sum (n_i - 1), and the threshold is the
  Student-t quantile t(1 - alpha / (2 looks), df) instead of a fixed z = 2. ``heterogeneity`` (the
  largest s_i^2 / s_p^2) says when pooling is doubtful. Racing looks at the data repeatedly: each
  look spends alpha / ``looks`` (Bonferroni over the most looks racing can take), so the chance of
  a false "decided" over the whole race stays below alpha.
* **Latency uncertainty** enters by the delta method: for s = G / dL,
  var(s) = var(G) / dL^2 + G^2 var(dL) / dL^4, and the margin s_b - s_r adds the covariance from the
  parent's P shared by both gains: SE_P^2 (1 / dL_b - 1 / dL_r)^2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Optional

from lps_keras.search.stats import mean as _mean
from lps_keras.search.stats import (  # noqa: F401 - mean_sd_se, student_t_* and pooled_sd are part of this API
    mean_sd_se,
    pooled_sd,
    student_t_cdf,
    student_t_quantile,
)

VERDICTS = ("decided", "equivalent", "no gain", "undecided", "unknown")


@dataclasses.dataclass(frozen=True)
class RacingConfig:
    """Successive-halving settings (mirrors ``search.proxy.racing`` of the recipe): see :func:`race_plan`."""

    enabled: bool = False
    max_seeds: int = 8  # no network gets more seeds than this
    budget: int = 24  # extra (network, seed) trainings per step, on top of the first round (the parent's count)
    eta: int = 2  # keep the best 1/eta of the contenders, multiply their seeds by eta


def racing_rounds(seeds: int, racing: RacingConfig) -> int:
    """The most racing rounds one step may take: enough for the parent to reach ``max_seeds`` (each round
    multiplies the largest count by ``eta``) plus one for contenders that join late. Fixed in advance, so
    that alpha can be split over the looks (Bonferroni); the search stops racing there."""
    if not racing.enabled or racing.max_seeds <= seeds:
        return 0
    return math.ceil(math.log(racing.max_seeds / seeds) / math.log(racing.eta) - 1e-9) + 1


@dataclasses.dataclass(frozen=True)
class DecisionConfig:
    """``alpha``: two-sided error rate of "decided"; ``epsilon``: indifference zone in score units
    (mIoU as a fraction: 0.005 = 0.5 points); ``latency_z``: SEs within which dL is "the same latency";
    ``looks``: the most looks at the data in one step (1 + racing rounds), over which alpha is split."""

    alpha: float = 0.05
    epsilon: float = 0.005
    latency_z: float = 2.0
    looks: int = 1

    def __post_init__(self):
        if not 0 < self.alpha < 1 or self.epsilon < 0 or self.latency_z < 0 or self.looks < 1:
            raise ValueError(f"bad decision settings: {self!r}")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One network's evidence at this step: scores (one per seed), median latency, SE of dL to the parent."""

    name: str
    scores: tuple
    latency: float
    latency_se: float = 0.0


@dataclasses.dataclass(frozen=True)
class ArmReport:
    name: str
    n: int
    mean: Optional[float]
    gain: Optional[float]  # mean - parent's mean
    gain_se: Optional[float]
    d_lat: float
    d_lat_se: float
    status: str  # "slope", "dominates", "same latency", "no gain", "failed", "parent"
    slope: Optional[float] = None
    slope_se: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    kind: str
    chosen: Optional[int]  # index into the candidates (None for "no gain")
    winner: Optional[int]  # the best by the ranking (differs from chosen when "equivalent" takes a cheaper one)
    runner_up: Optional[int]
    margin: Optional[float]
    margin_se: Optional[float]
    quantile: Optional[float]
    df: int
    pooled_sd: Optional[float]
    heterogeneity: Optional[float]
    regret_ucb: Optional[float]  # not decided: upper bound of the regret of taking the cheapest contender
    contenders: tuple  # candidates not separated from the winner (winner first)
    arms: tuple  # ArmReport per candidate (in input order), then the parent's
    reason: str


# --------------------------------------------------------------------------- the verdict
def judge(parent: Arm, candidates: Sequence[Arm], config: DecisionConfig = DecisionConfig()) -> Verdict:
    """The verdict of a step (module docstring). ``candidates[i].scores`` empty = its evaluation failed."""
    if not parent.scores:
        raise ValueError("the parent needs at least one score at this step")
    sd, df, het = pooled_sd([parent.scores, *[c.scores for c in candidates if c.scores]])
    q = None if df == 0 else student_t_quantile(1 - config.alpha / (2 * config.looks), df)
    p_mean, n_p = _mean(parent.scores), len(parent.scores)
    se_p = None if sd is None else sd / math.sqrt(n_p)

    reports = []
    for c in candidates:
        d_lat, d_se = c.latency - parent.latency, max(float(c.latency_se), 0.0)
        if not c.scores:
            reports.append(ArmReport(c.name, 0, None, None, None, d_lat, d_se, "failed"))
            continue
        mean, n = _mean(c.scores), len(c.scores)
        gain = mean - p_mean
        gain_se = None if sd is None else sd * math.sqrt(1 / n + 1 / n_p)
        significant = gain > 0 if q is None else gain > q * gain_se
        slower = d_lat > config.latency_z * d_se if d_se > 0 else d_lat > 0
        if not slower:  # the same latency within noise, or faster: only a significant gain counts
            status = "dominates" if significant else "same latency"
            reports.append(ArmReport(c.name, n, mean, gain, gain_se, d_lat, d_se, status))
        elif gain <= 0:
            reports.append(ArmReport(c.name, n, mean, gain, gain_se, d_lat, d_se, "no gain"))
        else:
            slope = gain / d_lat
            slope_se = None if gain_se is None else math.sqrt(
                (gain_se / d_lat) ** 2 + (gain * d_se / d_lat ** 2) ** 2)
            reports.append(ArmReport(c.name, n, mean, gain, gain_se, d_lat, d_se, "slope", slope, slope_se))
    parent_report = ArmReport(parent.name, n_p, p_mean, 0.0, None, 0.0, 0.0, "parent")
    arms = (*reports, parent_report)
    common = dict(df=df, pooled_sd=sd, heterogeneity=het, quantile=q, arms=arms)

    order = _order(reports)
    if not order:
        why = ("no candidate improves on the parent" if any(r.status != "failed" for r in reports)
               else "every candidate's evaluation failed")
        return Verdict("no gain", None, None, None, None, None, regret_ucb=None, contenders=(), reason=why, **common)
    best = order[0]
    if len(order) == 1:
        b = reports[best]
        if q is None:
            return Verdict("unknown", best, best, None, None, None, regret_ucb=None, contenders=(best,),
                           reason="the only candidate that gains; the noise cannot be estimated (one seed per "
                                  "network)", **common)
        if b.status == "dominates" or b.gain > q * b.gain_se:
            return Verdict("decided", best, best, None, None, None, regret_ucb=None, contenders=(best,),
                           reason=f"the only candidate that gains, significantly (gain {b.gain:.4g} > t {q:.3g} x "
                                  f"SE {b.gain_se:.3g})", **common)
        # A mean a hair above the parent's is no evidence of a gain (a published step 5 was "decided" on
        # +0.0001 +- 0.02): race it against the parent; if the budget runs out it is still the best guess.
        return Verdict("undecided", best, best, None, None, None, regret_ucb=None, contenders=(best,),
                       reason=f"the only candidate with a positive mean gain, {b.gain:.4g} <= t {q:.3g} x SE "
                              f"{b.gain_se:.3g}: not significant", **common)
    r = order[1]
    margin, margin_se = _margin(reports[best], reports[r], se_p)
    if q is not None and reports[best].status == "dominates" and reports[r].status == "slope":
        return Verdict("decided", best, best, r, None, None, regret_ucb=None, contenders=(best,),
                       reason=f"{reports[best].name} gains significantly at no latency cost", **common)
    if q is None or margin_se is None:
        return Verdict("unknown", best, best, r, margin, None, regret_ucb=None, contenders=tuple(order),
                       reason="the noise cannot be estimated (one seed per network)", **common)
    if margin > q * margin_se:
        return Verdict("decided", best, best, r, margin, margin_se, regret_ucb=None, contenders=(best,),
                       reason=f"margin {margin:.4g} > t {q:.3g} x SE {margin_se:.3g}", **common)

    # Not decided: the contenders are the candidates not separated from the winner. Taking the cheapest of
    # them, c, costs at most max_j (s_j - s_c) over the others (any of them may be the true best); its upper
    # confidence bound, at the winner's dL (epsilon is gain at that cost), decides "equivalent". Bounding the
    # winner's lead over each contender instead would let a contender dearer than the winner (never taken)
    # block the verdict, and would never bound what taking c costs against the others.
    pool = [best]
    for i in order[1:]:
        m, se = _margin(reports[best], reports[i], se_p)
        if m is None or se is None or m <= q * se:
            pool.append(i)  # not clearly worse than the winner
    cheapest = min(pool, key=lambda i: (candidates[i].latency, i))
    scale = reports[best].d_lat if reports[best].status == "slope" else 1.0  # regret in score units
    worst = 0.0  # a regret is never negative: c may well be the best
    for j in pool:
        if j == cheapest:
            continue
        m, se = _margin(reports[j], reports[cheapest], se_p)
        worst = math.inf if m is None or se is None else max(worst, (m + q * se) * scale)
    if worst < config.epsilon:
        taken = "the winner" if cheapest == best else f"{reports[cheapest].name}, the cheapest of them"
        return Verdict("equivalent", cheapest, best, r, margin, margin_se, regret_ucb=worst, contenders=tuple(pool),
                       reason=f"{len(pool)} contenders; taking the cheapest costs at most {worst:.3g} of gain "
                              f"(upper bound of its regret) < epsilon {config.epsilon:.4g}; took {taken}", **common)
    return Verdict("undecided", best, best, r, margin, margin_se, regret_ucb=worst, contenders=tuple(pool),
                   reason=f"margin {margin:.4g} <= t {q:.3g} x SE {margin_se:.3g} and the regret bound of taking the "
                          f"cheapest contender, {worst:.3g}, >= epsilon {config.epsilon:.4g}", **common)


def _order(reports: Sequence[ArmReport]) -> list[int]:
    """Eligible candidates best first: dominating ones by mean, then the others by slope; ties to the
    higher mean, the lower latency increase, the earlier op."""
    keys = {}
    for i, r in enumerate(reports):
        if r.status == "dominates":
            keys[i] = (2, r.mean, r.mean, -r.d_lat, -i)
        elif r.status == "slope":
            keys[i] = (1, r.slope, r.mean, -r.d_lat, -i)
    return sorted(keys, key=lambda i: keys[i], reverse=True)


def _margin(b: ArmReport, o: ArmReport, se_p: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    """Margin of ``b`` over ``o`` (same kind) and its SE by the delta method (module docstring)."""
    if b.status != o.status:
        return None, None
    if b.status == "dominates":
        margin = b.mean - o.mean
        if b.gain_se is None:
            return margin, None
        # gains share the parent's P, which cancels in the difference of means
        se = math.sqrt(max(b.gain_se ** 2 + o.gain_se ** 2 - 2 * (se_p or 0.0) ** 2, 0.0))
        return margin, se
    margin = b.slope - o.slope
    if b.gain_se is None or se_p is None:
        return margin, None
    own_b = b.gain_se ** 2 - se_p ** 2  # var of the candidate's own mean
    own_o = o.gain_se ** 2 - se_p ** 2
    var = (own_b / b.d_lat ** 2 + own_o / o.d_lat ** 2 + se_p ** 2 * (1 / b.d_lat - 1 / o.d_lat) ** 2
           + (b.gain * b.d_lat_se / b.d_lat ** 2) ** 2 + (o.gain * o.d_lat_se / o.d_lat ** 2) ** 2)
    return margin, math.sqrt(max(var, 0.0))


def race_plan(verdict: Verdict, seeds: Sequence[int], parent_seeds: int, max_seeds: int, budget: int,
              eta: int = 2) -> tuple[dict, int]:
    """Successive halving over the contenders of an undecided (or, one seed each, unknown) step, parent too.

    Returns ``({candidate index: new seed count}, new parent seed count)``; an empty plan means stop.
    The best ceil(n / eta) contenders (at least two, where there are two) and the parent grow to eta times the largest
    count so far (capped by ``max_seeds``), one seed at a time in rank order while ``budget`` lasts.
    """
    if verdict.kind not in ("undecided", "unknown") or budget <= 0 or not verdict.contenders:
        return {}, parent_seeds
    # Successive halving as in Hyperband (Li et al., 2018), extra seeds as the resource. Hand-rolled: Ray
    # Tune's and Optuna's schedulers prune trials reporting intermediate values of one long run and own the
    # trial loop; here fixed networks gain independent seeds through the search's own resumable journal.
    survivors = list(verdict.contenders[: max(2, math.ceil(len(verdict.contenders) / eta))])
    target = min(max_seeds, eta * max(max(seeds[i] for i in survivors), parent_seeds))
    want = {i: seeds[i] for i in survivors}
    parent = parent_seeds
    left, grew = budget, True
    while left > 0 and grew:
        grew = False
        for i in survivors:
            if want[i] < target and left > 0:
                want[i] += 1
                left -= 1
                grew = True
        if parent < target and left > 0:
            parent += 1
            left -= 1
            grew = True
    return {i: n for i, n in want.items() if n > seeds[i]}, parent
