"""Progressive expansion (Algorithm 1 of the LPS-Net paper) as pure, resumable search logic.

Nothing here trains or times a network: the caller passes ``latency_fn(arch) -> float`` and
``evaluate_fn(arch, context) -> score`` (the proxy mIoU), so the algorithm is unit-testable
with synthetic functions and importable without TensorFlow.

One step from the current network N (latency L, score P):

1. measure Lat(N + d) for every op d of the operation set; the target L_T is the maximum;
2. for each op, ``k_d = argmin_{k >= 1} |Lat(N + k d) - L_T|`` (see :func:`find_k`);
3. de-duplicate the candidates N + k_d d by arch hash (first op in the operation order wins,
   the others are recorded as aliases);
4. evaluate every candidate with ``seeds`` seeds -> P_d, the mean (sequentially, or on an ``Executor``);
5. choose d* by the slope (P_d - P) / (L_d - L) (see :func:`select_candidate` for the guard
   against L_d <= L and for ties), and judge whether d* beats the runner-up by ``decision_z``
   standard errors of the slope difference; if not, and racing is on, add seeds to the contenders
   by successive halving and choose again (:mod:`lps_keras.search.racing`);
6. N <- N + k_d* d*, and record the step (means, standard errors, margin, decided or not).

Every latency, every finished (architecture, seed) evaluation and every chosen step goes into a
:class:`~lps_keras.search.journal.SearchJournal` (one JSON file, rewritten atomically after every
event), so a killed search reruns without re-measuring or re-training anything it finished: completed steps are
replayed from the cached values and checked against the recorded choices.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from lps_keras.arch import EXPANSION_OPS, Arch, ExpansionOp
from lps_keras.errors import check_path_name
from lps_keras.search.candidates import (  # noqa: F401 - re-exported
    DIMENSIONS,
    SearchError,
    find_k,
    propose_candidates,
    select_candidate,
)
from lps_keras.search.executors import CandidateFailed
from lps_keras.search.journal import Candidate, EvalContext, Evaluation, JournalError, SearchJournal, Step
from lps_keras.search.racing import Decision, RacingConfig, decide, mean_sd_se, racing_round


def _as_evaluation(result: Any, arch: Arch) -> Evaluation:
    if isinstance(result, Evaluation):
        ev = result
    elif isinstance(result, Mapping):
        if "score" not in result:
            raise SearchError(f"evaluate_fn returned a mapping without 'score' for {arch}: {result!r}")
        ev = Evaluation(score=result["score"], metrics=result.get("metrics", {}), weights=result.get("weights"))
    else:
        ev = Evaluation(score=result)
    score = ev.score
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise SearchError(f"evaluate_fn must return a finite score for {arch}, got {score!r}")
    metrics = json.loads(json.dumps(dict(ev.metrics), default=float))
    weights = None if ev.weights is None else str(ev.weights)
    return dataclasses.replace(ev, score=float(score), metrics=metrics, weights=weights)


def _timed_call(fn: Callable, arch: Arch, context: EvalContext) -> tuple[Any, float]:
    # Module level so that ProcessPoolExecutor can pickle it; timing in the worker excludes queueing.
    t0 = time.perf_counter()
    result = fn(arch, context)
    return result, time.perf_counter() - t0


def evaluate_candidates(
    candidates: Sequence[tuple[Arch, EvalContext]],
    evaluate_fn: Callable[[Arch, EvalContext], Any],
    executor: Optional[concurrent.futures.Executor] = None,
    on_result: Optional[Callable[[int, Evaluation], None]] = None,
    on_failure: Optional[Callable[[int, str], None]] = None,
) -> list[Evaluation]:
    """Evaluate ``(arch, context)`` pairs; results in input order.

    Sequential by default. With an ``executor`` (thread or process pool, or any
    ``concurrent.futures.Executor`` front-end of a work-list runner) all pairs are submitted at
    once; ``evaluate_fn`` must then be picklable for a process pool. ``on_result(i, evaluation)``
    runs in the calling thread as each evaluation finishes, so the journal records it at once.
    If one fails, evaluations not yet started are cancelled, those in flight are still awaited
    and reported, then the first failure (in input order) is raised. Except a
    :class:`~lps_keras.search.executors.CandidateFailed` (an executor's evaluation that failed
    after its retries) when ``on_failure`` is given: ``on_failure(i, error)`` records it, its
    result is None, and the others go on.
    """
    results: list[Optional[Evaluation]] = [None] * len(candidates)

    def finish(i: int, raw: Any, seconds: float) -> None:
        ev = dataclasses.replace(_as_evaluation(raw, candidates[i][0]), seconds=seconds)
        results[i] = ev
        if on_result is not None:
            on_result(i, ev)

    if executor is None:
        for i, (arch, ctx) in enumerate(candidates):
            raw, seconds = _timed_call(evaluate_fn, arch, ctx)
            finish(i, raw, seconds)
        return results  # type: ignore[return-value]

    futures = {executor.submit(_timed_call, evaluate_fn, arch, ctx): i for i, (arch, ctx) in enumerate(candidates)}
    errors: dict[int, BaseException] = {}
    try:
        for fut in concurrent.futures.as_completed(futures):
            i = futures[fut]
            if fut.cancelled():
                continue
            exc = fut.exception()
            if isinstance(exc, CandidateFailed) and on_failure is not None:
                on_failure(i, str(exc))
                continue
            if exc is None:
                try:
                    finish(i, *fut.result())
                except Exception as e:  # a bad return value counts as that candidate's failure
                    exc = e
            if exc is not None:
                errors[i] = exc
                for other in futures:
                    other.cancel()
    except BaseException:
        for other in futures:
            other.cancel()
        raise
    if errors:
        raise errors[min(errors)]
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- the search
def run_expansion(
    start: Arch,
    latency_fn: Callable[[Arch], float],
    evaluate_fn: Callable[[Arch, EvalContext], Any],
    steps: int,
    journal: Optional[SearchJournal] = None,
    ops: Sequence[ExpansionOp] = EXPANSION_OPS,
    max_k: int = 16,
    executor: Optional[concurrent.futures.Executor] = None,
    progress: Optional[Callable[[str], None]] = print,
    fingerprint: Any = None,
    seeds: int = 1,
    decision_z: float = 2.0,
    racing: Optional[RacingConfig] = None,
    warm_start: bool = False,
) -> list[Step]:
    """Run ``steps`` expansion steps from ``start``; returns ``steps + 1`` records (step 0 = start).

    ``journal`` (default: in memory) caches latencies and evaluations by arch hash and seed; steps it
    already holds are replayed from those caches and must reproduce the recorded choices.
    ``fingerprint`` (any JSON value, e.g. :func:`fingerprint` of the recipe's data, proxy
    schedule and latency settings) is stored in the journal and checked on resume.
    ``progress`` receives one line per measurement/evaluation/step (None: silent).
    ``seeds``: evaluations per architecture (``context.seed`` 0 .. seeds - 1); P is their mean and each
    step records standard errors, the winner's margin and whether it is decided at ``decision_z``
    standard errors (:mod:`lps_keras.search.racing`). ``racing`` adds seeds to the contenders of a
    step that is not decided. ``warm_start``: the start network is evaluated before the first
    candidates, so every candidate's ``context.parent_weights`` is known (``search.proxy.init = parent``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SearchError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1:
        raise SearchError(f"max_k must be an int >= 1, got {max_k!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SearchError(f"seeds must be an int >= 1, got {seeds!r}")
    racing = racing or RacingConfig()
    ops = tuple(ops)
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise SearchError(f"expansion op names must be unique, got {names!r}")
    for name in names:
        # Op names name candidates in the journal, the tables and the step recipes' descriptions;
        # kept to plain names so that none can become a path anywhere a candidate is written.
        check_path_name("expansion op name", name)
    journal = journal if journal is not None else SearchJournal(None)
    journal.bind(start, ops, max_k, fingerprint)
    say = progress or (lambda _msg: None)

    def lat(arch: Arch) -> float:
        cached = journal.latency(arch)
        if cached is not None:
            return cached
        value = latency_fn(arch)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SearchError(f"latency_fn must return a finite number for {arch}, got {value!r}")
        value = float(value)
        journal.record_latency(arch, value)
        say(f"  latency {arch} = {value:.6g}")
        return value

    failed: dict[str, str] = {}  # arch hash -> error of an evaluation that failed after its retries

    def scores(step: int, requests: list[tuple[Arch, EvalContext, int]]) -> dict[str, list[Evaluation]]:
        """Seeds 0 .. n - 1 of each (arch, context, n), by arch hash; only pairs missing from the journal run.

        An arch whose evaluation failed (after the executor's retries) is left out of the result and
        kept in ``failed``. A failure recorded in the journal is replayed for a step the journal
        already holds (its choice was made without that candidate) and retried otherwise.
        """
        todo = []
        for arch, ctx, n in requests:
            if arch.hash in failed:
                continue
            have = journal.evaluations_of(arch)
            missing = [seed for seed in range(n) if seed not in have]
            if missing and journal.recorded_step(step) is not None and journal.failure(arch) is not None:
                failed[arch.hash] = journal.failure(arch)
                continue
            todo += [(arch, dataclasses.replace(ctx, seed=seed)) for seed in missing]
        if todo:
            t0 = time.perf_counter()
            done = [0]
            n_all = sum(n for _, _, n in requests)
            say(f"step {step}: {len(todo)} evaluation(s) to run ({n_all - len(todo)} already in the journal)")

            def on_result(i: int, ev: Evaluation) -> None:
                arch, ctx = todo[i]
                journal.record_evaluation(arch, ev, ctx)
                done[0] += 1
                eta = (time.perf_counter() - t0) / done[0] * (len(todo) - done[0])
                label = "start" if ctx.op is None else f"{ctx.op} k={ctx.k}"
                say(f"step {step}: [{done[0]}/{len(todo)}] {label} seed {ctx.seed} {arch} score={ev.score:.4f} "
                    f"({ev.seconds:.1f}s, step ETA {eta:.0f}s)")

            def on_failure(i: int, error: str) -> None:
                arch, ctx = todo[i]
                journal.record_failure(arch, error, ctx)
                failed[arch.hash] = error
                say(f"step {step}: {ctx.op or 'start'} seed {ctx.seed} {arch} FAILED, going on without it: {error}")

            evaluate_candidates(todo, evaluate_fn, executor=executor, on_result=on_result, on_failure=on_failure)
        out = {}
        for arch, _, n in requests:
            if arch.hash in failed:
                continue
            have = journal.evaluations_of(arch)
            out[arch.hash] = [have[seed] for seed in range(n)]
        return out

    def check_replay(step: Step) -> None:
        recorded = journal.recorded_step(step.index)
        if recorded is None:
            journal.record_step(step)
            return
        if recorded.arch.hash != step.arch.hash or recorded.op != step.op:
            raise JournalError(
                f"{journal.where}: replaying step {step.index} chose {step.op} -> {step.arch}, but the journal "
                f"recorded {recorded.op} -> {recorded.arch}; the journal is inconsistent with this setup"
            )

    def start_step(evals: Mapping[str, list[Evaluation]]) -> Step:
        if start.hash in failed:
            raise SearchError(f"the start network {start} could not be evaluated: {failed[start.hash]}")
        evs = evals[start.hash]
        values = tuple(e.score for e in evs)
        mean, sd, se = mean_sd_se(values)
        step = Step(index=0, arch=start, latency=cur_lat, score=mean, metrics=evs[0].metrics,
                    weights=evs[0].weights, scores=values, score_sd=sd, score_se=se)
        check_replay(step)
        return step

    cur_lat = lat(start)
    start_ctx = EvalContext(step=0, key=start.hash)
    history: list[Step] = []
    if steps == 0 or warm_start or journal.evaluations_of(start):
        history.append(start_step(scores(0, [(start, start_ctx, seeds)])))

    for t in range(1, steps + 1):
        current = history[-1] if history else None
        replay = journal.recorded_step(t) is not None
        say(f"step {t}/{steps}{' (replayed from the journal)' if replay else ''}: from "
            f"{current.arch if current else start} (latency {cur_lat:.6g})")
        target, cands = propose_candidates(current.arch if current else start, ops, lat, max_k)
        ctxs = [EvalContext(step=t, key=c.arch.hash, op=c.op, dimension=c.dimension, k=c.k, index=i,
                            total=len(cands), parent_weights=current.weights if current else None)
                for i, c in enumerate(cands)]
        n_seeds = [seeds] * len(cands)
        requests = [(c.arch, ctx, seeds) for c, ctx in zip(cands, ctxs)]
        if current is None:  # the start network is scored together with the first candidates
            requests.insert(0, (start, start_ctx, seeds))
        evals = scores(t, requests)
        if current is None:
            current = start_step(evals)
            history.append(current)
        best, cands, decision = _choose(cands, evals, failed, current, decision_z)
        spent = 0
        while decision.decided is not True:
            plan = racing_round(cands, best, n_seeds, current.latency, current.score_se, decision_z, racing,
                                racing.budget - spent)
            if not plan:
                break
            say(f"step {t}/{steps}: undecided (margin {_pm(decision.margin, decision.margin_se)}); racing "
                + ", ".join(f"{cands[i].op} to {n} seeds" for i, n in plan.items()))
            evals.update(scores(t, [(cands[i].arch, ctxs[i], n) for i, n in plan.items()]))
            for i, n in plan.items():
                spent += n - n_seeds[i]
                n_seeds[i] = n
            best, cands, decision = _choose(cands, evals, failed, current, decision_z)
        chosen = cands[best]
        step = Step(index=t, arch=chosen.arch, latency=chosen.latency, score=chosen.score, op=chosen.op,
                    dimension=chosen.dimension, k=chosen.k, target_latency=target, slope=chosen.slope,
                    candidates=tuple(cands), metrics=chosen.metrics, weights=chosen.weights, scores=chosen.scores,
                    score_sd=chosen.score_sd, score_se=chosen.score_se,
                    runner_up=None if decision.runner_up is None else cands[decision.runner_up].op,
                    margin=decision.margin, margin_se=decision.margin_se, decided=decision.decided,
                    racing_evaluations=spent)
        check_replay(step)
        history.append(step)
        verdict = {True: "decided", False: "UNDECIDED", None: "decision unknown (one seed)"}[decision.decided]
        say(f"step {t}/{steps}: chose {chosen.op} x{chosen.k} ({chosen.dimension}) -> {chosen.arch} "
            f"latency {chosen.latency:.6g} (target {target:.6g}) score {_pm(chosen.score, chosen.score_se)}; "
            f"margin over {step.runner_up} {_pm(decision.margin, decision.margin_se)}: {verdict}")
        cur_lat = chosen.latency
    return history


def _pm(value: Optional[float], se: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" + ("" if se is None else f" +- {se:.2g}")


def _choose(cands: Sequence[Candidate], evals: Mapping[str, list[Evaluation]], failed: Mapping[str, str],
            parent: Step, z: float) -> tuple[int, list[Candidate], Decision]:
    """Annotate ``cands`` with their seeds' mean, sd and SE, select d* (on the means) and judge the margin.

    A candidate whose evaluation failed carries its error and is never chosen (rank "failed").
    """
    scored = []
    for c in cands:
        if c.arch.hash not in evals:
            scored.append(dataclasses.replace(c, error=failed.get(c.arch.hash, "no evaluation")))
            continue
        evs = evals[c.arch.hash]
        values = tuple(e.score for e in evs)
        mean, sd, se = mean_sd_se(values)
        scored.append(dataclasses.replace(c, score=mean, scores=values, score_sd=sd, score_se=se,
                                          metrics=evs[0].metrics, weights=evs[0].weights))
    best, annotated = select_candidate(scored, parent.latency, parent.score)
    return best, annotated, decide(annotated, best, parent.latency, parent.score_se, z)
