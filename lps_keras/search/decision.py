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
  Student-t quantile t(1 - alpha / (2 looks), df) instead of a fixed z = 2. ``heterogeneity`` is the
  largest s_i^2 / s_p^2. Pooling is checked: when the largest variance is beyond chance against the
  others' pooled one (Cochran's test, :func:`~lps_keras.search.stats.largest_variance_test`, at alpha),
  each network keeps its own variance and every contrast its Welch-Satterthwaite df, and the reason says
  so (a network noisier than the pool would otherwise get too small an SE). Racing looks at the data repeatedly: each
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

from lps_keras.search.stats import (  # noqa: F401 - mean_sd_se, student_t_* and pooled_sd are part of this API
    largest_variance_test,
    mean_sd_se,
    pooled_sd,
    student_t_cdf,
    student_t_quantile,
    variance,
    welch_df,
)
from lps_keras.search.stats import mean as _mean

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


def search_decision(search) -> tuple[DecisionConfig, RacingConfig]:
    """The decision and racing settings of a recipe's ``search`` section, as the search uses them (``epsilon``
    from mIoU points to a score fraction); :func:`with_looks` adds the looks for a seed count. One place, so
    that replays of the verdict (the fidelity study's regret) judge by the search's own rule."""
    d = search.decision
    return (DecisionConfig(alpha=d.alpha, epsilon=d.epsilon / 100.0, latency_z=d.latency_z),
            RacingConfig(**dataclasses.asdict(search.proxy.racing)))


def with_looks(config: DecisionConfig, seeds: int, racing: RacingConfig) -> DecisionConfig:
    """``config`` with the looks of a step that starts with ``seeds`` seeds: 1 + :func:`racing_rounds`."""
    return dataclasses.replace(config, looks=1 + racing_rounds(seeds, racing))


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
    quantile: Optional[float]  # the t quantile of the test the verdict rests on (margin, or a lone gain)
    df: int  # its degrees of freedom: the pooled ones, or Welch-Satterthwaite's (rounded down) when not pooled
    pooled_sd: Optional[float]
    heterogeneity: Optional[float]
    regret_ucb: Optional[float]  # not decided: upper bound of the regret of taking the cheapest contender
    contenders: tuple  # candidates not separated from the winner (winner first)
    arms: tuple  # ArmReport per candidate (in input order), then the parent's
    reason: str
    pooled: bool = True  # False: the seed variances failed largest_variance_test, per-network SEs were used


# --------------------------------------------------------------------------- the noise
class _Noise:
    """The variance of each network's mean score and the t quantile of a contrast of them.

    Networks are indexed 0 = the parent, i + 1 = candidate i. **Pooled** (the default): one sd s_p over the
    step (same proxy) and its df for every contrast. **Per network**, when :func:`largest_variance_test` finds
    one network's seed variance too large to share a pool with the others (pooling would understate that
    network's SE and overstate the others'): each network's own s_i^2 / n_i, and per contrast the
    Welch-Satterthwaite df, rounded down (conservative). A network with one seed has no variance of its own;
    it keeps the pooled one.
    """

    def __init__(self, samples: Sequence[tuple], config: DecisionConfig):
        self.sd, self.df, self.het = pooled_sd([s for s in samples if s])
        self.n = [len(s) for s in samples]
        self.p = 1 - config.alpha / (2 * config.looks)
        self.q = None if self.df == 0 else student_t_quantile(self.p, self.df)
        test = largest_variance_test(samples, config.alpha)
        self.pooled = test is None or test[1] <= test[2]
        self.why = ""
        if not self.pooled:
            i, ratio, bound = test
            # a network with one seed, or seeds that happen to agree exactly (s^2 = 0), keeps the pooled
            # variance: its own would give its contrasts SE 0 and decide any margin
            self.own = [(variance(s), len(s) - 1) if len(s) >= 2 and variance(s) > 0 else (self.sd ** 2, self.df)
                        for s in samples]
            self.why = (f"seed variances not poolable ({'the parent' if i == 0 else f'candidate {i - 1}'}'s s^2 "
                        f"is {ratio:.3g} x the others' pooled, above F(1 - alpha/k) = {bound:.3g}): per-network "
                        "SEs, Welch df; ")

    def contrast(self, terms: Sequence[tuple[int, float]], known: float = 0.0):
        """``(SE, t quantile, df)`` of sum coef * mean_i over ``terms`` (network, coef), plus a ``known`` variance
        (latency, delta method); ``(None, None, 0)`` when the noise cannot be estimated."""
        if self.q is None:
            return None, None, 0
        if self.pooled:
            var = math.fsum(c * c * self.sd ** 2 / self.n[i] for i, c in terms) + known
            return math.sqrt(max(var, 0.0)), self.q, self.df
        parts = [(c * c * self.own[i][0] / self.n[i], self.own[i][1]) for i, c in terms]
        var = math.fsum(v for v, _ in parts) + known
        df = welch_df(parts + [(known, math.inf)])
        df = self.df if df is None else max(1, math.floor(df))
        return math.sqrt(max(var, 0.0)), student_t_quantile(self.p, df), df


# --------------------------------------------------------------------------- the verdict
def judge(parent: Arm, candidates: Sequence[Arm], config: DecisionConfig = DecisionConfig()) -> Verdict:
    """The verdict of a step (module docstring). ``candidates[i].scores`` empty = its evaluation failed."""
    if not parent.scores:
        raise ValueError("the parent needs at least one score at this step")
    noise = _Noise([tuple(parent.scores), *[tuple(c.scores) for c in candidates]], config)
    q, df = noise.q, noise.df
    p_mean, n_p = _mean(parent.scores), len(parent.scores)

    reports, gain_tests = [], {}
    for i, c in enumerate(candidates):
        d_lat, d_se = c.latency - parent.latency, max(float(c.latency_se), 0.0)
        if not c.scores:
            reports.append(ArmReport(c.name, 0, None, None, None, d_lat, d_se, "failed"))
            continue
        mean, n = _mean(c.scores), len(c.scores)
        gain = mean - p_mean
        gain_se, q_gain, df_gain = noise.contrast([(i + 1, 1.0), (0, -1.0)])
        gain_tests[i] = (q_gain, df_gain)
        significant = gain > 0 if q_gain is None else gain > q_gain * gain_se
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
    common = dict(pooled_sd=noise.sd, heterogeneity=noise.het, pooled=noise.pooled, arms=arms)

    def margin_of(i, j):
        return _margin(reports, i, j, noise)

    order = _order(reports)
    if not order:
        why = ("no candidate improves on the parent" if any(r.status != "failed" for r in reports)
               else "every candidate's evaluation failed")
        return Verdict("no gain", None, None, None, None, None, q, df, regret_ucb=None, contenders=(),
                       reason=noise.why + why, **common)
    best = order[0]
    if len(order) == 1:
        b = reports[best]
        q, df = gain_tests[best]
        if q is None:
            return Verdict("unknown", best, best, None, None, None, q, df, regret_ucb=None, contenders=(best,),
                           reason="the only candidate that gains; the noise cannot be estimated (one seed per "
                                  "network)", **common)
        if b.status == "dominates" or b.gain > q * b.gain_se:
            return Verdict("decided", best, best, None, None, None, q, df, regret_ucb=None, contenders=(best,),
                           reason=f"{noise.why}the only candidate that gains, significantly (gain {b.gain:.4g} > "
                                  f"t {q:.3g} x SE {b.gain_se:.3g})", **common)
        # A mean a hair above the parent's is no evidence of a gain (a published step 5 was "decided" on
        # +0.0001 +- 0.02): race it against the parent; if the budget runs out it is still the best guess.
        return Verdict("undecided", best, best, None, None, None, q, df, regret_ucb=None, contenders=(best,),
                       reason=f"{noise.why}the only candidate with a positive mean gain, {b.gain:.4g} <= t {q:.3g} "
                              f"x SE {b.gain_se:.3g}: not significant", **common)
    r = order[1]
    margin, margin_se, q_m, df_m = margin_of(best, r)
    if q is not None and reports[best].status == "dominates" and reports[r].status == "slope":
        return Verdict("decided", best, best, r, None, None, q, df, regret_ucb=None, contenders=(best,),
                       reason=f"{noise.why}{reports[best].name} gains significantly at no latency cost", **common)
    if q is None or margin_se is None:
        return Verdict("unknown", best, best, r, margin, None, q, df, regret_ucb=None, contenders=tuple(order),
                       reason="the noise cannot be estimated (one seed per network)", **common)
    if margin > q_m * margin_se:
        return Verdict("decided", best, best, r, margin, margin_se, q_m, df_m, regret_ucb=None, contenders=(best,),
                       reason=f"{noise.why}margin {margin:.4g} > t {q_m:.3g} x SE {margin_se:.3g}", **common)

    # Not decided: the contenders are the candidates not separated from the winner. Taking the cheapest of
    # them, c, costs at most max_j (s_j - s_c) over the others (any of them may be the true best); its upper
    # confidence bound (simultaneous over the others), at the winner's dL (epsilon is gain at that cost),
    # decides "equivalent". Bounding the winner's lead over each contender instead would let a contender
    # dearer than the winner (never taken) block the verdict, and would never bound what taking c costs
    # against the others.
    pool = [best]
    for i in order[1:]:
        m, se, qi, _ = margin_of(best, i)
        if m is None or se is None or m <= qi * se:
            pool.append(i)  # not clearly worse than the winner
    cheapest = min(pool, key=lambda i: (candidates[i].latency, i))
    scale = reports[best].d_lat if reports[best].status == "slope" else 1.0  # regret in score units
    worst = 0.0  # a regret is never negative: c may well be the best
    others = [j for j in pool if j != cheapest]
    # one bound for the largest of len(others) contrasts: Bonferroni over them (their t at alpha / others)
    p_all = 1 - config.alpha / (2 * config.looks * max(1, len(others)))
    for j in others:
        m, se, _, df_j = margin_of(j, cheapest)
        if m is None or se is None or not df_j:
            worst = math.inf
            continue
        worst = max(worst, (m + student_t_quantile(p_all, df_j) * se) * scale)
    if worst < config.epsilon:
        taken = "the winner" if cheapest == best else f"{reports[cheapest].name}, the cheapest of them"
        return Verdict("equivalent", cheapest, best, r, margin, margin_se, q_m, df_m, regret_ucb=worst,
                       contenders=tuple(pool),
                       reason=f"{noise.why}{len(pool)} contenders; taking the cheapest costs at most {worst:.3g} of "
                              f"gain (upper bound of its regret) < epsilon {config.epsilon:.4g}; took {taken}",
                       **common)
    return Verdict("undecided", best, best, r, margin, margin_se, q_m, df_m, regret_ucb=worst, contenders=tuple(pool),
                   reason=f"{noise.why}margin {margin:.4g} <= t {q_m:.3g} x SE {margin_se:.3g} and the regret bound "
                          f"of taking the cheapest contender, {worst:.3g}, >= epsilon {config.epsilon:.4g}", **common)


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


def _margin(reports: Sequence[ArmReport], i: int, j: int, noise: _Noise):
    """Margin of candidate ``i`` over ``j`` (same kind), its SE by the delta method (module docstring), the t
    quantile and df it is tested with; ``(None, None, None, 0)`` for two kinds, SE None without a noise estimate."""
    b, o = reports[i], reports[j]
    if b.status != o.status:
        return None, None, None, 0
    if b.status == "dominates":
        # the gains share the parent's P, which cancels in the difference of means
        se, q, df = noise.contrast([(i + 1, 1.0), (j + 1, -1.0)])
        return b.mean - o.mean, se, q, df
    # s = (mean - P) / dL: each mean enters with 1 / dL, the shared P with 1 / dL_o - 1 / dL_b
    known = (b.gain * b.d_lat_se / b.d_lat ** 2) ** 2 + (o.gain * o.d_lat_se / o.d_lat ** 2) ** 2
    se, q, df = noise.contrast([(i + 1, 1 / b.d_lat), (j + 1, -1 / o.d_lat), (0, 1 / o.d_lat - 1 / b.d_lat)], known)
    return b.slope - o.slope, se, q, df


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
