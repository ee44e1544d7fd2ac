"""What the search records: an evaluation, its context, a candidate of a step, and a step (its verdict included).

Plain frozen dataclasses with ``to_dict``/``from_dict`` for the journal (:mod:`lps_keras.search.journal`) and the
reports (:mod:`lps_keras.search.report`). No TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from lps_keras.arch import Arch


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_fn`` reports for one architecture.

    ``evaluate_fn`` may also return a bare number (the score) or a mapping with ``score`` and
    optional ``metrics`` / ``weights`` keys.
    """

    score: float
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: Optional[str] = None
    seconds: Optional[float] = None  # wall time of the evaluation, filled in by the search


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """Passed to ``evaluate_fn`` with the architecture: where this evaluation sits in the search.

    ``key`` (the arch hash) is unique per architecture and is meant for naming the
    candidate's run directory / weights file. Picklable, so it can cross process boundaries.
    """

    step: int  # 0: the start network before any step; t >= 1: step t (its candidates and the parent)
    key: str
    op: Optional[str] = None  # None: the parent (or the start network), scored again at this step's seeds
    dimension: Optional[str] = None
    k: int = 0
    index: int = 0  # position among this step's evaluations
    total: int = 1
    seed: int = 0  # which proxy seed: step * SEED_STRIDE + i (lps_keras.search.algorithm.step_seed)
    parent_weights: Optional[str] = None  # the parent's weights (its first seed), for a warm start


@dataclasses.dataclass(frozen=True)
class Candidate:
    """N + k * op for one op (plus the ops that gave the same architecture, ``aliases``), and its evidence.

    ``latency`` is the latency the verdict used (the paired measurement's parent median + its median
    difference when the step was measured as a set, else the single measurement); ``latency_se`` the
    standard error of its difference to the parent (0 without paired measurement).
    """

    op: str
    dimension: str
    k: int
    arch: Arch
    latency: float
    aliases: tuple[str, ...] = ()
    capped: bool = False  # k stopped at max_k (or at an invalid arch) before reaching L_T
    score: Optional[float] = None
    slope: Optional[float] = None  # (P_d - P) / (L_d - L) for status "slope"
    rank: Optional[str] = None  # the verdict's status: slope | dominates | same latency | no gain | failed
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: Optional[str] = None
    scores: tuple[float, ...] = ()  # one per seed, in seed order; ``score`` is their mean
    score_sd: Optional[float] = None  # sample sd of ``scores`` (None with one seed)
    score_se: Optional[float] = None  # standard error of the mean
    error: Optional[str] = None  # its evaluation failed after the executor's retries (rank "failed")
    latency_se: float = 0.0
    gain: Optional[float] = None  # score - the parent's score at this step's seeds
    gain_se: Optional[float] = None  # from the pooled sd
    slope_se: Optional[float] = None  # delta method, latency uncertainty included

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(hash=self.arch.hash, arch=self.arch.to_dict(), aliases=list(self.aliases),
                 metrics=dict(self.metrics), scores=list(self.scores))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw.update(arch=Arch.from_dict(d["arch"]), aliases=tuple(d.get("aliases", ())),
                  metrics=d.get("metrics", {}),
                  scores=tuple(d.get("scores") or (() if d.get("score") is None else (d["score"],))))
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Step:
    """One row of the expansion log. Step 0 is the start network (``op`` None, ``verdict`` None).

    A step whose verdict is ``no gain`` keeps the parent (``arch`` is the parent, ``op`` None) and
    ends the expansion. ``parent_scores`` are the parent's scores at this step's seeds (the P every
    gain of the step is measured from; for step 0, ``scores`` itself).
    """

    index: int
    arch: Arch
    latency: float
    score: float
    op: Optional[str] = None
    dimension: Optional[str] = None
    k: int = 0
    target_latency: Optional[float] = None
    slope: Optional[float] = None
    candidates: tuple[Candidate, ...] = ()
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: Optional[str] = None
    scores: tuple[float, ...] = ()  # the chosen network's score per seed; ``score`` is their mean
    score_sd: Optional[float] = None
    score_se: Optional[float] = None
    runner_up: Optional[str] = None  # op of the second-best candidate by the ranking
    margin: Optional[float] = None  # the ranking's best minus the runner-up (slope, or score if it dominates)
    margin_se: Optional[float] = None  # its standard error (pooled seeds, latency by the delta method)
    verdict: Optional[str] = None  # decided | equivalent | no gain | undecided | unknown (decision.VERDICTS)
    racing_evaluations: int = 0  # extra (network, seed) trainings racing spent on this step, the parent's too
    parent_scores: tuple[float, ...] = ()
    parent_latency: Optional[float] = None  # the parent's latency at this step (paired median when measured so)
    winner: Optional[str] = None  # the ranking's best, when "equivalent" took a cheaper contender
    quantile: Optional[float] = None  # Student-t threshold the margin was tested against
    df: int = 0  # degrees of freedom of the margin's test (pooled, or Welch's when the noise was not pooled)
    pooled_sd: Optional[float] = None
    heterogeneity: Optional[float] = None  # max s_i^2 / s_p^2 over the pooled networks (pooling doubtful when large)
    regret_ucb: Optional[float] = None  # upper confidence bound of the regret of taking the cheapest contender
    reason: str = ""

    def summary(self) -> str:
        """The step's verdict and choice in one line (the search's progress output)."""
        mark = f" ({self.reason})" if self.verdict != "decided" and self.reason else ""
        if not self.op:
            return f"{self.verdict}{mark}: kept {self.arch}"
        return (f"{self.verdict}{mark}: chose {self.op} x{self.k} ({self.dimension}) -> {self.arch} latency "
                f"{self.latency:.6g} (target {self.target_latency:.6g}) score {_pm(self.score, self.score_se)}; "
                f"margin over {self.runner_up} {_pm(self.margin, self.margin_se)}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del d["index"]
        d.update(step=self.index, hash=self.arch.hash, arch=self.arch.to_dict(), metrics=dict(self.metrics),
                 scores=list(self.scores), parent_scores=list(self.parent_scores),
                 candidates=[c.to_dict() for c in self.candidates])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Step:
        known = {f.name for f in dataclasses.fields(cls)} - {"index"}
        kw = {k: v for k, v in d.items() if k in known}
        kw.update(index=d["step"], arch=Arch.from_dict(d["arch"]), latency=d["latency"], score=d["score"],
                  candidates=tuple(Candidate.from_dict(c) for c in d.get("candidates", ())),
                  metrics=d.get("metrics", {}), scores=tuple(d.get("scores") or (d["score"],)),
                  parent_scores=tuple(d.get("parent_scores", ())))
        return cls(**kw)


def _pm(value: Optional[float], se: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" + ("" if se is None else f" +- {se:.2g}")
