"""The small statistics the step verdict needs (:mod:`lps_keras.search.decision`). Pure, no TensorFlow, no SciPy.

Hand-rolled because the search stays free of heavy dependencies and asks only a few quantiles per step: the
Student-t distribution (Simpson's rule on the density), the seed noise pooled across a step's networks, and
the check of that pooling (Cochran's test of the largest variance, on F quantiles from the incomplete beta) with
Welch-Satterthwaite degrees of freedom for when it fails.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Optional


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


def mean(xs) -> float:
    """Arithmetic mean (fsum)."""
    return math.fsum(xs) / len(xs)


def variance(xs) -> float:
    """Sample variance (ddof 1); needs two values or more."""
    m = mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def student_t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    if x < 0:
        return 1.0 - student_t_cdf(-x, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(t):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    n = 2000  # Simpson panels on [0, x]: |error| < 1e-9 for the quantiles used here (x < 100)
    h = x / n
    total = pdf(0.0) + pdf(x)
    for i in range(1, n):
        total += (4 if i % 2 else 2) * pdf(i * h)
    return 0.5 + total * h / 3


@functools.lru_cache(maxsize=256)  # a search asks the same few (p, df) at every step and racing round
def student_t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t (bisection on :func:`student_t_cdf`)."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p!r}")
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2
        if hi > 1e6:
            return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def pooled_sd(samples: Sequence[Sequence[float]]) -> tuple[Optional[float], int, Optional[float]]:
    """(pooled sd, degrees of freedom, heterogeneity = max s_i^2 / s_p^2) over samples of >= 2 values."""
    parts = [(len(s) - 1, variance(s)) for s in samples if len(s) >= 2]
    df = sum(d for d, _ in parts)
    if df == 0:
        return None, 0, None
    var = math.fsum(d * v for d, v in parts) / df
    het = None if var == 0 else max(v for _, v in parts) / var
    return math.sqrt(var), df, het


def beta_inc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz; Numerical
    Recipes' betacf, on whichever side of the mean it converges fast)."""
    if not 0 <= x <= 1:
        raise ValueError(f"x must be in [0, 1], got {x!r}")
    if x in (0, 1):
        return float(x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - beta_inc(b, a, 1 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return math.exp(log_front) * h / a


def f_cdf(x: float, df1: float, df2: float) -> float:
    """P(F <= x) for Snedecor's F with (``df1``, ``df2``) degrees of freedom."""
    if x <= 0:
        return 0.0
    return beta_inc(df1 / 2, df2 / 2, df1 * x / (df1 * x + df2))


@functools.lru_cache(maxsize=256)
def f_quantile(p: float, df1: float, df2: float) -> float:
    """The ``p``-quantile of F(``df1``, ``df2``) (bisection on :func:`f_cdf`)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    lo, hi = 0.0, 1.0
    while f_cdf(hi, df1, df2) < p:
        lo, hi = hi, hi * 2
        if hi > 1e12:
            return math.inf
    for _ in range(100):
        mid = (lo + hi) / 2
        if f_cdf(mid, df1, df2) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def largest_variance_test(samples: Sequence[Sequence[float]], alpha: float) -> Optional[tuple[int, float, float]]:
    """Is the seed noise poolable? Cochran's test of the largest variance, for unequal sample sizes.

    Of the samples with >= 2 values, the one with the largest variance s_i^2 is compared with the pooled
    variance of the others, s_rest^2: under equal variances s_i^2 / s_rest^2 ~ F(n_i - 1, df_rest). It is
    the largest of k such ratios, so the bound is F's 1 - alpha / k quantile (Bonferroni over the k samples;
    for equal sizes this is exactly Cochran's C bound, C = [1 + (k - 1) / F(1 - alpha / k; v, (k - 1) v)]^-1).
    Returns ``(index into samples, ratio, bound)``, or None when fewer than two samples have a variance or
    every variance is 0. A ratio above the bound says pooling is doubtful.
    """
    parts = [(i, len(s) - 1, variance(s)) for i, s in enumerate(samples) if len(s) >= 2]
    if len(parts) < 2:
        return None
    i, d_i, v_i = max(parts, key=lambda p: (p[2], -p[0]))
    if v_i == 0:
        return None
    d_rest = sum(d for j, d, _ in parts if j != i)
    v_rest = math.fsum(d * v for j, d, v in parts if j != i) / d_rest
    ratio = math.inf if v_rest == 0 else v_i / v_rest
    return i, ratio, f_quantile(1 - alpha / len(parts), d_i, d_rest)


def welch_df(components: Sequence[tuple[float, float]]) -> Optional[float]:
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance estimates ``(variance, df)``:
    (sum v)^2 / sum (v^2 / df); a component with df = inf (known, e.g. latency) counts only in the sum.
    None when every estimated component is 0."""
    total = math.fsum(v for v, _ in components)
    denom = math.fsum(v * v / d for v, d in components if math.isfinite(d) and v > 0)
    return None if denom == 0 else total * total / denom
