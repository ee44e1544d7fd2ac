"""Evaluating (architecture, context) pairs, in this process or on an executor, results in input order.

Used by :class:`lps_keras.search.algorithm.Expansion`; pure (the evaluation function is the caller's).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from lps_keras.arch import Arch
from lps_keras.search.candidates import SearchError
from lps_keras.search.executors import CandidateFailed
from lps_keras.search.records import EvalContext, Evaluation


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
