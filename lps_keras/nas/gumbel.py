"""Straight-through Gumbel-softmax sampling and the temperature schedule (keras.ops, any backend).

One path per step: the forward value is the one-hot of ``argmax(alpha + g)`` (g Gumbel noise), the
gradient is that of ``softmax((alpha + g) / tau)``: ``hard - stop_gradient(soft) + soft``. The
noise is an argument (uniform draws in (0, 1)) so that the engine can draw it from a stateless
seed of the step -- a resumed search then draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math

from keras import ops

from lps_keras.nas.errors import NASError  # noqa: F401 - re-exported: its historical home

_TINY = 1e-20  # keeps log(log(u)) finite where u rounds to 0 or 1


def gumbel_noise(uniform):
    """Gumbel(0, 1) draws from uniform draws in (0, 1)."""
    return -ops.log(-ops.log(ops.clip(uniform, _TINY, 1.0 - 1e-7)) + _TINY)


def gumbel_softmax(alpha, tau, uniform):
    """``(hard, soft)``: straight-through one-hot sample and its soft relaxation, over the last axis.

    Args:
        alpha: architecture logits, shape ``(..., n)``.
        tau: temperature (> 0).
        uniform: uniform (0, 1) draws of ``alpha``'s shape.
    ``hard``'s forward value is exactly one-hot; its gradient is ``soft``'s.
    """
    soft = ops.softmax((alpha + gumbel_noise(uniform)) / tau, axis=-1)
    hard = ops.one_hot(ops.argmax(soft, axis=-1), ops.shape(alpha)[-1], dtype=soft.dtype)
    return hard - ops.stop_gradient(soft) + soft, soft


@dataclasses.dataclass(frozen=True)
class TemperatureSchedule:
    """Exponential annealing from ``start`` to ``end`` over ``steps`` steps (HMSeg: 10 -> 0.1, as issue 27 quotes it).

    Exponential rather than linear: the ratio between consecutive temperatures is constant, so the
    sampling sharpens evenly on the log scale the softmax works on (GDAS, by HMSeg's second author,
    anneals the same way).
    """

    start: float = 10.0
    end: float = 0.1
    steps: int = 1000

    def __post_init__(self):
        for field in ("start", "end"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise NASError(f"temperature {field} must be a positive number, got {v!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise NASError(f"temperature steps must be an int >= 1, got {self.steps!r}")

    def __call__(self, step: int) -> float:
        if self.steps == 1:
            return float(self.end)
        t = min(max(step, 0), self.steps - 1) / (self.steps - 1)
        return float(math.exp(math.log(self.start) + t * (math.log(self.end) - math.log(self.start))))
