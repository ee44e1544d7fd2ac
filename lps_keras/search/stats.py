"""The small statistics the step verdict needs (:mod:`lps_keras.search.decision`). Pure, no TensorFlow, no SciPy.

Hand-rolled because the search stays free of heavy dependencies and asks only a few quantiles per step: the
Student-t distribution (Simpson's rule on the density) and the seed noise pooled across a step's networks.
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
