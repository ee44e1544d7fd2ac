"""Progressive expansion (Algorithm 1 of the LPS-Net paper) as one object of pure, resumable search logic.

Nothing here trains or times a network: the caller passes ``latency_fn(arch) -> float``,
``evaluate_fn(arch, context) -> score`` (the proxy mIoU), optionally ``latency_set_fn(parent, archs)`` (paired
measurement of a step's set) and the executor the evaluations run on, so the algorithm is unit-testable
with synthetic functions and importable without TensorFlow.

One step t from the current network N:

1. measure Lat(N + d) for every op d; the target L_T is the maximum;
2. for each op, ``k_d = argmin_{k >= 1} |Lat(N + k d) - L_T|`` (:func:`~lps_keras.search.candidates.find_k`),
   the smaller of the two nearest k when their paired SEs do not separate them (``decision.latency_z``,
   :func:`~lps_keras.search.candidates.nearest_k`), candidates de-duplicated by arch hash;
3. measure the parent and the candidates together (``latency_set_fn``: interleaved rounds, so every
   candidate's latency difference to the parent carries its standard error);
4. score the parent *and* every candidate with this step's seeds ``t * 1000 + i`` (the parent is one more
   arm with d = 0: its P is never the previous step's selected maximum, which is biased upwards);
5. judge (:func:`lps_keras.search.decision.judge`): decided / equivalent / no gain / undecided / unknown;
   while undecided (or unknown) and racing is on, add seeds to the contenders and the parent
   (:func:`~lps_keras.search.decision.race_plan`) for at most :func:`~lps_keras.search.decision.racing_rounds`
   rounds, alpha being split over those looks;
6. N <- the chosen candidate; a ``no gain`` step keeps N and ends the expansion.

Every latency, paired set, finished (architecture, seed) evaluation and step goes into a
:class:`~lps_keras.search.journal.SearchJournal`, so a killed search reruns without re-measuring or
re-training anything it finished: recorded steps are replayed from the journal and checked against it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from lps_keras.arch import EXPANSION_OPS, Arch, ExpansionOp
from lps_keras.errors import check_path_name
from lps_keras.search.candidates import SearchError, propose_candidates
from lps_keras.search.decision import (
    Arm,
    DecisionConfig,
    RacingConfig,
    judge,
    mean_sd_se,
    race_plan,
    racing_rounds,
    with_looks,
)
from lps_keras.search.evaluations import evaluate_candidates
from lps_keras.search.journal import JournalError, SearchJournal
from lps_keras.search.records import Candidate, EvalContext, Evaluation, Step

SEED_STRIDE = 1000  # step t's seeds are t * SEED_STRIDE + i: fresh at every step, never reused across steps


def step_seed(step: int, i: int) -> int:
    """The i-th proxy seed of step ``step`` (step 0: the start network before the first step)."""
    if not 0 <= i < SEED_STRIDE:
        raise SearchError(f"seed index {i} out of range (at most {SEED_STRIDE} seeds per step)")
    return step * SEED_STRIDE + i


LatencySetFn = Callable[[Arch, Sequence[Arch]], Mapping[str, tuple[float, float]]]


class Expansion:
    """The expansion from ``start``: :meth:`latency`, :meth:`paired`, :meth:`scores`, :meth:`step`,
    :meth:`race` and :meth:`run`. See the module docstring; arguments as for :func:`run_expansion`."""

    def __init__(self, start: Arch, latency_fn: Callable[[Arch], float],
                 evaluate_fn: Callable[[Arch, EvalContext], Any], *, latency_set_fn: Optional[LatencySetFn] = None,
                 journal: Optional[SearchJournal] = None, ops: Sequence[ExpansionOp] = EXPANSION_OPS,
                 max_k: int = 16, executor: Optional[concurrent.futures.Executor] = None,
                 progress: Optional[Callable[[str], None]] = print, fingerprint: Any = None, seeds: int = 1,
                 decision: Optional[DecisionConfig] = None, racing: Optional[RacingConfig] = None,
                 warm_start: bool = False, latency_device: Optional[str] = None):
        if isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1:
            raise SearchError(f"max_k must be an int >= 1, got {max_k!r}")
        if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds < SEED_STRIDE:
            raise SearchError(f"seeds must be an int in [1, {SEED_STRIDE}), got {seeds!r}")
        self.ops = tuple(ops)
        names = [op.name for op in self.ops]
        if len(set(names)) != len(names):
            raise SearchError(f"expansion op names must be unique, got {names!r}")
        for name in names:
            # Op names name candidates in the journal, the tables and the step recipes' descriptions;
            # kept to plain names so that none can become a path anywhere a candidate is written.
            check_path_name("expansion op name", name)
        self.start, self.latency_fn, self.evaluate_fn = start, latency_fn, evaluate_fn
        self.latency_set_fn, self.executor, self.max_k = latency_set_fn, executor, max_k
        self.seeds, self.warm_start = seeds, warm_start
        self.latency_device = latency_device  # where latencies are measured, journalled per step that measures
        self._at: Optional[int] = None  # the step whose latencies are being measured
        self.racing = racing or RacingConfig()
        self.max_rounds = racing_rounds(seeds, self.racing)
        self.decision = with_looks(decision or DecisionConfig(), seeds, self.racing)
        self.journal = journal if journal is not None else SearchJournal(None)
        self.journal.bind(start, self.ops, max_k, fingerprint)
        self.say = progress or (lambda _msg: None)
        self.failed: dict[str, str] = {}  # arch hash -> error of an evaluation that failed after its retries
        self.history: list[Step] = []
        self.total: Optional[int] = None  # steps asked of run(), for progress lines

    # ------------------------------------------------------------------ measurements
    def latency(self, arch: Arch) -> float:
        """One network's latency (journal first): what picks k and the target."""
        cached = self.journal.latency(arch)
        if cached is not None:
            return cached
        value = _finite(self.latency_fn(arch), f"latency_fn must return a finite number for {arch}")
        self.journal.record_latency(arch, value)
        self._measured_at(self._at)
        self.say(f"  latency {arch} = {value:.6g}")
        return value

    def paired(self, t: int, parent: Arch, cands: Sequence[Candidate]) -> dict[str, tuple[float, float]]:
        """{hash: (latency, SE of its difference to the parent)} for the parent and the candidates of step ``t``.

        From ``latency_set_fn`` (recorded in the journal, so a replay does not re-measure), else the single
        latencies with SE 0. A step the journal holds without a set was decided on single latencies (a
        journal from before a profile search had sets): it replays with SE 0, as it was decided.
        """
        wanted = [parent.hash] + [c.arch.hash for c in cands]
        recorded = self.journal.latency_set(t)
        if self.latency_set_fn is None or (not recorded and self.journal.recorded_step(t) is not None):
            return {parent.hash: (self.latency(parent), 0.0), **{c.arch.hash: (c.latency, 0.0) for c in cands}}
        if all(h in recorded for h in wanted):
            return recorded
        self.say(f"{self._label(t)}: latencies of the parent and {len(cands)} candidates as one set (paired)")
        values = dict(self.latency_set_fn(parent, [c.arch for c in cands]))
        self._measured_at(t)
        out = {}
        for h in wanted:
            if h not in values:
                raise SearchError(f"latency_set_fn returned no latency for {h}")
            lat, se = values[h]
            out[h] = (_finite(lat, "latency_set_fn latency"), _finite(se, "latency_set_fn SE"))
        self.journal.record_latency_set(t, out)
        return out

    def _measured_at(self, t: Optional[int]) -> None:
        """Journal :attr:`latency_device` as where step ``t``'s latencies were measured. A step measured on two
        devices (killed, resumed on another machine) keeps both texts, joined by `` + ``."""
        if self.latency_device is None or t is None:
            return
        have = self.journal.latency_device(t)
        if have is None or self.latency_device not in have.split(" + "):
            self.journal.record_latency_device(t, self.latency_device if have is None
                                               else f"{have} + {self.latency_device}")

    def _round_latencies(self, parent: Arch) -> Optional[Callable[[Sequence[Arch]], list[float]]]:
        """How :func:`propose_candidates` times a round of N + k d networks: with a paired-set function,
        together with the parent, as the parent's latency plus each one's paired difference to it.

        Timed alone, the networks that pick L_T and k drifted by up to 1 ms between runs 30 minutes apart
        (docs/step1_latency_repeat.md) while the paired differences moved far less. The values are
        recorded like single latencies, so a replay reads them instead of measuring again.
        """
        if self.latency_set_fn is None:
            return None
        exact = getattr(self.latency_set_fn, "deterministic", False)

        def latencies(archs: Sequence[Arch]) -> list[float]:
            # Two ops can give the same network (res_path3 from one path is res_path2): time it once.
            missing = list({a.hash: a for a in archs if self.journal.latency(a) is None}.values())
            if missing:
                reference = self.latency(parent)  # one constant offset for the whole step
                values = self.latency_set_fn(parent, missing)
                self._measured_at(self._at)
                base = _finite(values[parent.hash][0], "latency_set_fn latency")
                for a in missing:
                    value = reference + _finite(values[a.hash][0], "latency_set_fn latency") - base
                    # its SE (of the paired difference) lets the k rule see when two k are not told apart; a
                    # prediction (profile) is the same on every call, so nothing flips: its k is the argmin
                    se = 0.0 if exact else _finite(values[a.hash][1], "latency_set_fn SE")
                    self.journal.record_latency(a, value, se)
                    self.say(f"  latency {a} = {value:.6g} (paired with the parent)")
            return [self.journal.latency(a) for a in archs]

        return latencies

    def scores(self, t: int, requests: Sequence[tuple[Arch, EvalContext, int]]) -> dict[str, list[Evaluation]]:
        """Seeds ``step_seed(t, 0 .. n - 1)`` of each (arch, context, n), by arch hash; only missing pairs run.

        An arch whose evaluation failed (after the executor's retries) is left out and kept in ``failed``.
        A failure recorded in the journal is replayed for a step the journal holds, retried otherwise.
        """
        todo = []
        for arch, ctx, n in requests:
            if arch.hash in self.failed:
                continue
            have = self.journal.evaluations_of(arch)
            missing = [s for s in (step_seed(t, i) for i in range(n)) if s not in have]
            if missing and self.journal.recorded_step(t) is not None and self.journal.failure(arch) is not None:
                self.failed[arch.hash] = self.journal.failure(arch)
                continue
            todo += [(arch, dataclasses.replace(ctx, seed=s)) for s in missing]
        if todo:
            self._evaluate(t, todo, sum(n for _, _, n in requests))
        out = {}
        for arch, _, n in requests:
            if arch.hash not in self.failed:
                have = self.journal.evaluations_of(arch)
                out[arch.hash] = [have[step_seed(t, i)] for i in range(n)]
        return out

    def _evaluate(self, t: int, todo: list[tuple[Arch, EvalContext]], n_all: int) -> None:
        t0, done = time.perf_counter(), [0]
        self.say(f"{self._label(t)}: {len(todo)} evaluation(s) to run ({n_all - len(todo)} already in the journal)")

        def on_result(i: int, ev: Evaluation) -> None:
            arch, ctx = todo[i]
            self.journal.record_evaluation(arch, ev, ctx)
            done[0] += 1
            eta = (time.perf_counter() - t0) / done[0] * (len(todo) - done[0])
            label = "parent" if ctx.op is None else f"{ctx.op} k={ctx.k}"
            self.say(f"{self._label(t)}: [{done[0]}/{len(todo)}] {label} seed {ctx.seed} {arch} score={ev.score:.4f} "
                     f"({ev.seconds:.1f}s, step ETA {eta:.0f}s)")

        def on_failure(i: int, error: str) -> None:
            arch, ctx = todo[i]
            self.journal.record_failure(arch, error, ctx)
            self.failed[arch.hash] = error
            self.say(f"{self._label(t)}: {ctx.op or 'parent'} seed {ctx.seed} {arch} FAILED, going on without it: "
                     f"{error}")

        evaluate_candidates(todo, self.evaluate_fn, executor=self.executor, on_result=on_result,
                            on_failure=on_failure)

    # ------------------------------------------------------------------ steps
    def run(self, steps: int) -> list[Step]:
        """Run ``steps`` steps (fewer if a step finds no gain); returns the records, step 0 = the start."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise SearchError(f"steps must be an int >= 0, got {steps!r}")
        self.history, self.total = [], steps
        if steps == 0 or self.warm_start:
            # Scored on its own only when no step will score it (or its weights seed a warm start).
            ctx = EvalContext(step=0, key=self.start.hash)
            self._at = 0
            evs = self.scores(0, [(self.start, ctx, self.seeds)])
            if self.start.hash not in evs:
                raise SearchError(f"the start network {self.start} could not be evaluated: "
                                  f"{self.failed[self.start.hash]}")
            self._record(self._plain_step(0, self.start, self.latency(self.start), evs[self.start.hash]))
        for t in range(1, steps + 1):
            step = self.step(t)
            if step.verdict == "no gain":
                self.say(f"step {t}/{steps}: no candidate gains on {step.arch}; the expansion stops here")
                break
        return self.history

    def _label(self, t: int) -> str:
        return f"step {t}" + ("" if self.total is None else f"/{self.total}")

    def step(self, t: int) -> Step:
        """Step ``t`` from the last network of :attr:`history` (or the start); recorded and returned."""
        parent = self.history[-1] if self.history else None
        parent_arch = parent.arch if parent else self.start
        replay = self.journal.recorded_step(t) is not None
        self.say(f"{self._label(t)}: from {parent_arch}{' (replayed from the journal)' if replay else ''}")
        self._at = t
        target, cands = propose_candidates(parent_arch, self.ops, self.latency, self.max_k,
                                           latencies_fn=self._round_latencies(parent_arch),
                                           latency_se_fn=self.journal.latency_se, latency_z=self.decision.latency_z)
        lats = self.paired(t, parent_arch, cands)
        cands = [dataclasses.replace(c, latency=lats[c.arch.hash][0], latency_se=lats[c.arch.hash][1]) for c in cands]
        weights = parent.weights if parent else None
        ctxs = [EvalContext(step=t, key=c.arch.hash, op=c.op, dimension=c.dimension, k=c.k, index=i + 1,
                            total=len(cands) + 1, parent_weights=weights) for i, c in enumerate(cands)]
        parent_ctx = EvalContext(step=t, key=parent_arch.hash, index=0, total=len(cands) + 1, parent_weights=weights)
        n = [self.seeds] * len(cands)
        evals = self.scores(t, [(parent_arch, parent_ctx, self.seeds)] + [(c.arch, x, self.seeds)
                                                                          for c, x in zip(cands, ctxs)])
        if parent_arch.hash not in evals:
            raise SearchError(f"the parent {parent_arch} could not be evaluated at step {t}: "
                              f"{self.failed[parent_arch.hash]}")
        if parent is None:  # the start's record: its scores at step 1's seeds
            parent = self._plain_step(0, parent_arch, lats[parent_arch.hash][0], evals[parent_arch.hash])
            self._record(parent)
        verdict = self._judge(parent_arch, lats, cands, evals)
        recorded = self.journal.recorded_step(t)
        if recorded is not None and recorded.racing_evaluations == 0 and recorded.verdict != verdict.kind:
            # A step recorded without racing is judged again on the very same scores: a different verdict means
            # the rules changed since the journal was written; say so before racing trains anything.
            raise JournalError(
                f"{self.journal.where}: step {t} was recorded as {recorded.verdict} without racing, but the same "
                f"scores now give {verdict.kind} ({verdict.reason}): the journal was written under other decision "
                "rules. Keep it for its results and run the search into a new output directory, or remove step "
                f"{t} and later ones from its 'steps' to judge them again from the recorded evaluations")
        verdict, spent = self.race(t, verdict, parent_arch, parent_ctx, cands, ctxs, n, lats, evals)
        step = self._step_record(t, target, parent_arch, lats[parent_arch.hash][0], cands, evals, verdict, spent)
        self._record(step)
        self.say(f"{self._label(t)}: {step.summary()}")
        return step

    def race(self, t, verdict, parent_arch, parent_ctx, cands, ctxs, n, lats, evals):
        """Add seeds to an undecided step's contenders and its parent until decided, or budget/rounds run out."""
        spent, n_parent = 0, self.seeds
        for _ in range(self.max_rounds):
            plan, new_parent = race_plan(verdict, n, n_parent, self.racing.max_seeds, self.racing.budget - spent,
                                         self.racing.eta)
            if not plan and new_parent == n_parent:
                break
            self.say(f"{self._label(t)}: {verdict.kind}; racing " + ", ".join(
                [f"{cands[i].op} to {k} seeds" for i, k in plan.items()] + [f"the parent to {new_parent} seeds"]))
            evals.update(self.scores(t, [(parent_arch, parent_ctx, new_parent)]
                                     + [(cands[i].arch, ctxs[i], k) for i, k in plan.items()]))
            spent += new_parent - n_parent + sum(k - n[i] for i, k in plan.items())
            n_parent = new_parent
            for i, k in plan.items():
                n[i] = k
            verdict = self._judge(parent_arch, lats, cands, evals)
        return verdict, spent

    # ------------------------------------------------------------------ helpers
    def _judge(self, parent_arch, lats, cands, evals):
        parent = Arm("parent", tuple(e.score for e in evals[parent_arch.hash]), lats[parent_arch.hash][0])
        arms = [Arm(c.op, tuple(e.score for e in evals.get(c.arch.hash, ())), c.latency, c.latency_se)
                for c in cands]
        return judge(parent, arms, self.decision)

    def _step_record(self, t, target, parent_arch, parent_lat, cands, evals, verdict, spent) -> Step:
        parent_scores = tuple(e.score for e in evals[parent_arch.hash])
        annotated = []
        for c, r in zip(cands, verdict.arms):
            evs = evals.get(c.arch.hash)
            if evs is None:
                annotated.append(dataclasses.replace(c, rank="failed",
                                                     error=self.failed.get(c.arch.hash, "no evaluation")))
                continue
            mean, sd, se = mean_sd_se([e.score for e in evs])
            annotated.append(dataclasses.replace(
                c, score=mean, scores=tuple(e.score for e in evs), score_sd=sd, score_se=se, rank=r.status,
                slope=r.slope, slope_se=r.slope_se, gain=r.gain, gain_se=r.gain_se, metrics=evs[0].metrics,
                weights=evs[0].weights))
        common = dict(index=t, target_latency=target, candidates=tuple(annotated), verdict=verdict.kind,
                      racing_evaluations=spent, parent_scores=parent_scores, parent_latency=parent_lat,
                      runner_up=None if verdict.runner_up is None else cands[verdict.runner_up].op,
                      margin=verdict.margin, margin_se=verdict.margin_se, quantile=verdict.quantile, df=verdict.df,
                      pooled_sd=verdict.pooled_sd, heterogeneity=verdict.heterogeneity, regret_ucb=verdict.regret_ucb,
                      reason=verdict.reason)
        if verdict.chosen is None:  # no gain: the parent stays
            evs = evals[parent_arch.hash]
            mean, sd, se = mean_sd_se(parent_scores)
            return Step(arch=parent_arch, latency=parent_lat, score=mean, scores=parent_scores, score_sd=sd,
                        score_se=se, metrics=evs[0].metrics, weights=evs[0].weights, **common)
        c = annotated[verdict.chosen]
        winner = None if verdict.winner == verdict.chosen else cands[verdict.winner].op
        return Step(arch=c.arch, latency=c.latency, score=c.score, op=c.op, dimension=c.dimension, k=c.k,
                    slope=c.slope, metrics=c.metrics, weights=c.weights, scores=c.scores, score_sd=c.score_sd,
                    score_se=c.score_se, winner=winner, **common)

    def _plain_step(self, index: int, arch: Arch, latency: float, evs: Sequence[Evaluation]) -> Step:
        values = tuple(e.score for e in evs)
        mean, sd, se = mean_sd_se(values)
        return Step(index=index, arch=arch, latency=latency, score=mean, metrics=evs[0].metrics,
                    weights=evs[0].weights, scores=values, score_sd=sd, score_se=se, parent_scores=values)

    def _record(self, step: Step) -> None:
        """Append to the history; record it in the journal, or check it against the journal's record."""
        recorded = self.journal.recorded_step(step.index)
        if recorded is None:
            self.journal.record_step(step)
        elif recorded.arch.hash != step.arch.hash or recorded.op != step.op or recorded.verdict != step.verdict:
            raise JournalError(
                f"{self.journal.where}: replaying step {step.index} gave {step.verdict}: {step.op} -> {step.arch}, "
                f"but the journal recorded {recorded.verdict}: {recorded.op} -> {recorded.arch}; the journal is "
                "inconsistent with this setup"
            )
        self.history.append(step)


def run_expansion(start: Arch, latency_fn: Callable[[Arch], float], evaluate_fn: Callable[[Arch, EvalContext], Any],
                  steps: int, **options) -> list[Step]:
    """Run ``steps`` expansion steps from ``start``; returns the records (step 0 = the start).

    Options (all keyword): ``latency_set_fn(parent, archs) -> {hash: (latency, SE of dL)}`` (paired
    measurement of a step's set; default: single latencies, SE 0), ``journal`` (default in memory;
    steps it holds are replayed and must reproduce its records), ``ops``, ``max_k``, ``executor`` (a
    ``concurrent.futures.Executor``; default: in this thread), ``progress`` (one line per event; None:
    silent), ``fingerprint`` (any JSON value the journal checks on resume), ``seeds`` (first-round seeds
    per network and step), ``decision`` (:class:`~lps_keras.search.decision.DecisionConfig`), ``racing``
    (:class:`~lps_keras.search.decision.RacingConfig`), ``warm_start`` (the start is scored first so its
    weights seed step 1: ``search.proxy.init = parent``), ``latency_device`` (where ``latency_fn`` /
    ``latency_set_fn`` measure: journalled for each step that measures a latency, so a journal resumed on
    another machine says which step was timed where).
    """
    return Expansion(start, latency_fn, evaluate_fn, **options).run(steps)


def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchError(f"{what}, got {value!r}")
    return float(value)
