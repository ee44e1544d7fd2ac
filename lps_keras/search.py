"""Progressive expansion (Algorithm 1 of the LPS-Net paper) as pure, resumable search logic.

Nothing here trains or times a network: the caller passes ``latency_fn(arch) -> float`` and
``evaluate_fn(arch, context) -> score`` (the proxy mIoU), so the algorithm is unit-testable
with synthetic functions and importable without TensorFlow.

One step from the current network N (latency L, score P):

1. measure Lat(N + d) for every op d of the operation set; the target L_T is the maximum;
2. for each op, ``k_d = argmin_{k >= 1} |Lat(N + k d) - L_T|`` (see :func:`find_k`);
3. de-duplicate the candidates N + k_d d by arch hash (first op in the operation order wins,
   the others are recorded as aliases);
4. evaluate every candidate -> P_d (sequentially, or on an ``Executor``);
5. choose d* by the slope (P_d - P) / (L_d - L) (see :func:`select_candidate` for the guard
   against L_d <= L and for ties);
6. N <- N + k_d* d*, and record the step.

Every latency, every finished evaluation and every chosen step goes into a
:class:`SearchJournal` (one JSON file, rewritten atomically after every event), so a killed
search reruns without re-measuring or re-training anything it finished: completed steps are
replayed from the cached values and checked against the recorded choices.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

from lps_keras.arch import EXPANSION_OPS, Arch, ArchError, ExpansionOp
from lps_keras.fileio import atomic_write_bytes, atomic_write_text

JOURNAL_FORMAT = "lps_keras.search_journal"
JOURNAL_VERSION = 1
DIMENSIONS = ("depth", "width", "resolution")


class SearchError(RuntimeError):
    """The search cannot go on (no valid op, bad latency or score value, no eligible candidate)."""


class JournalError(ValueError):
    """A journal file is unreadable or belongs to a different search; the message names the file."""


# --------------------------------------------------------------------------- records
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

    step: int  # 0: the start network; t >= 1: a candidate of step t
    key: str
    op: Optional[str] = None
    dimension: Optional[str] = None
    k: int = 0
    index: int = 0  # position among this step's evaluations
    total: int = 1


@dataclasses.dataclass(frozen=True)
class Candidate:
    """N + k * op for one op (plus the ops that gave the same architecture, ``aliases``)."""

    op: str
    dimension: str
    k: int
    arch: Arch
    latency: float
    aliases: tuple[str, ...] = ()
    capped: bool = False  # k stopped at max_k (or at an invalid arch) before reaching L_T
    score: Optional[float] = None
    slope: Optional[float] = None  # (P_d - P) / (L_d - L); None when L_d <= L
    rank: Optional[str] = None  # "dominates" | "slope" | "excluded" (see select_candidate)
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: Optional[str] = None

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "dimension": self.dimension,
            "k": self.k,
            "hash": self.arch.hash,
            "arch": self.arch.to_dict(),
            "latency": self.latency,
            "aliases": list(self.aliases),
            "capped": self.capped,
            "score": self.score,
            "slope": self.slope,
            "rank": self.rank,
            "metrics": dict(self.metrics),
            "weights": self.weights,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(
            op=d["op"], dimension=d["dimension"], k=d["k"], arch=Arch.from_dict(d["arch"]), latency=d["latency"],
            aliases=tuple(d.get("aliases", ())), capped=d.get("capped", False), score=d.get("score"),
            slope=d.get("slope"), rank=d.get("rank"), metrics=d.get("metrics", {}), weights=d.get("weights"),
        )


@dataclasses.dataclass(frozen=True)
class Step:
    """One row of the expansion log. Step 0 is the start network (``op`` is None)."""

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

    def to_dict(self) -> dict:
        return {
            "step": self.index,
            "hash": self.arch.hash,
            "arch": self.arch.to_dict(),
            "latency": self.latency,
            "score": self.score,
            "op": self.op,
            "dimension": self.dimension,
            "k": self.k,
            "target_latency": self.target_latency,
            "slope": self.slope,
            "metrics": dict(self.metrics),
            "weights": self.weights,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Step:
        return cls(
            index=d["step"], arch=Arch.from_dict(d["arch"]), latency=d["latency"], score=d["score"], op=d.get("op"),
            dimension=d.get("dimension"), k=d.get("k", 0), target_latency=d.get("target_latency"),
            slope=d.get("slope"), candidates=tuple(Candidate.from_dict(c) for c in d.get("candidates", ())),
            metrics=d.get("metrics", {}), weights=d.get("weights"),
        )


# --------------------------------------------------------------------------- journal
def fingerprint(obj: Any) -> str:
    """A stable 16-hex-digit id of any JSON-able value (e.g. the recipe sections a search depends on)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SearchJournal:
    """The search's persistent state: latencies, evaluations and chosen steps, in one JSON file.

    ``path=None`` keeps everything in memory (no file). When ``path`` exists it is loaded and
    the search resumes from it; :meth:`bind` (called by :func:`run_expansion`) refuses a
    journal written by a different setup (start arch, op set, ``max_k`` or fingerprint).
    Latencies and evaluations are keyed by arch hash, so an architecture is measured and
    trained at most once per journal, whichever step meets it.
    """

    def __init__(self, path: Union[str, Path, None] = None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.RLock()
        self.setup: Optional[dict] = None
        self.latencies: dict[str, dict] = {}
        self.evaluations: dict[str, dict] = {}
        self.steps: list[dict] = []
        if self.path is not None and self.path.exists():
            self._load()

    @property
    def where(self) -> str:
        """The journal's file name for messages."""
        return str(self.path) if self.path is not None else "in-memory journal"

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise JournalError(f"{self.path}: search journal is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != JOURNAL_FORMAT:
            raise JournalError(f"{self.path}: not a search journal (expected format {JOURNAL_FORMAT!r})")
        if raw.get("version") != JOURNAL_VERSION:
            raise JournalError(
                f"{self.path}: search journal version {raw.get('version')!r} is not supported "
                f"(this code writes version {JOURNAL_VERSION})"
            )
        try:
            self.setup = raw["setup"]
            self.latencies = dict(raw["latencies"])
            self.evaluations = dict(raw["evaluations"])
            self.steps = list(raw["steps"])
        except (KeyError, TypeError) as e:
            raise JournalError(f"{self.path}: search journal is missing {e}") from None

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            "format": JOURNAL_FORMAT,
            "version": JOURNAL_VERSION,
            "setup": self.setup,
            "latencies": self.latencies,
            "evaluations": self.evaluations,
            "steps": self.steps,
        }
        atomic_write_text(self.path, json.dumps(data, indent=1, allow_nan=False) + "\n")

    # ------------------------------------------------------------- setup guard
    def bind(self, start: Arch, ops: Sequence[ExpansionOp], max_k: int, fingerprint: Any = None) -> None:
        """Attach this journal to one search setup, or check that it already belongs to it."""
        setup = {
            "start": start.to_dict(),
            "ops": [op.to_dict() for op in ops],
            "max_k": max_k,
            "fingerprint": json.loads(json.dumps(fingerprint)),
        }
        with self._lock:
            if self.setup is None:
                self.setup = setup
                self._save()
                return
            for key, what in (("start", "start arch"), ("ops", "expansion op set"), ("max_k", "max_k"),
                              ("fingerprint", "recipe fingerprint")):
                if self.setup.get(key) != setup[key]:
                    raise JournalError(
                        f"{self.where}: this search journal belongs to a different search setup: its {what} is "
                        f"{_short_json(self.setup.get(key))}, this run's is {_short_json(setup[key])}. "
                        "Use a new output directory (or delete the journal) to start a new search."
                    )

    # ------------------------------------------------------------- latencies
    def latency(self, arch: Arch) -> Optional[float]:
        with self._lock:
            entry = self.latencies.get(arch.hash)
            return None if entry is None else entry["latency"]

    def record_latency(self, arch: Arch, latency: float) -> None:
        with self._lock:
            self.latencies[arch.hash] = {"arch": arch.to_dict(), "latency": latency}
            self._save()

    # ------------------------------------------------------------- evaluations
    def evaluation(self, arch: Arch) -> Optional[Evaluation]:
        with self._lock:
            e = self.evaluations.get(arch.hash)
            if e is None:
                return None
            return Evaluation(score=e["score"], metrics=e.get("metrics", {}), weights=e.get("weights"),
                              seconds=e.get("seconds"))

    def record_evaluation(self, arch: Arch, evaluation: Evaluation, context: Optional[EvalContext] = None) -> None:
        with self._lock:
            self.evaluations[arch.hash] = {
                "arch": arch.to_dict(),
                "score": evaluation.score,
                "metrics": dict(evaluation.metrics),
                "weights": evaluation.weights,
                "seconds": evaluation.seconds,
                "step": context.step if context else None,
                "op": context.op if context else None,
                "k": context.k if context else None,
            }
            self._save()

    # ------------------------------------------------------------- steps
    def recorded_step(self, index: int) -> Optional[Step]:
        with self._lock:
            return Step.from_dict(self.steps[index]) if index < len(self.steps) else None

    def record_step(self, step: Step) -> None:
        with self._lock:
            if step.index != len(self.steps):
                raise JournalError(f"{self.where}: step {step.index} recorded out of order ({len(self.steps)} so far)")
            self.steps.append(step.to_dict())
            self._save()


def _short_json(x: Any, limit: int = 300) -> str:
    text = json.dumps(x, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- step pieces
def find_k(lat_of_k: Callable[[int], Optional[float]], target: float, max_k: int) -> tuple[int, float, bool]:
    """``k = argmin_{1 <= k <= max_k} |lat_of_k(k) - target|``, searched by growing k.

    k grows from 1 until the latency reaches ``target`` (``>=``), ``max_k`` is hit, or
    ``lat_of_k`` returns None (N + k d is not a valid arch, e.g. a negative custom delta);
    the answer is the argmin over the k measured so far, ties going to the smaller k. With a
    latency that grows with k this is exactly "the closer of the last two"; with a noisy one
    it is still the best of the values seen. Returns ``(k, latency, capped)``, where ``capped``
    says the target was never reached. ``lat_of_k(1)`` must not be None.
    """
    if max_k < 1:
        raise SearchError(f"max_k must be >= 1, got {max_k!r}")
    best_k, best_lat = 1, lat_of_k(1)
    if best_lat is None:
        raise SearchError("find_k: N + 1*d is not a valid arch")
    lat = best_lat
    k = 1
    while lat < target and k < max_k:
        nxt = lat_of_k(k + 1)
        if nxt is None:
            break
        k, lat = k + 1, nxt
        if abs(lat - target) < abs(best_lat - target):
            best_k, best_lat = k, lat
    return best_k, best_lat, lat < target


def propose_candidates(
    arch: Arch,
    ops: Sequence[ExpansionOp],
    latency_fn: Callable[[Arch], float],
    max_k: int,
) -> tuple[float, list[Candidate]]:
    """Steps 1-3: the target latency L_T and the de-duplicated candidates N + k_d d, in op order.

    An op whose N + d is not a valid architecture is skipped for this step. A candidate equal
    to N itself (an all-zero delta) is dropped: it is no expansion.
    """
    first: list[tuple[ExpansionOp, Arch, float]] = []
    for op in ops:
        try:
            a1 = arch.expand(op, 1)
        except ArchError:
            continue
        first.append((op, a1, latency_fn(a1)))
    if not first:
        raise SearchError(f"no expansion op gives a valid architecture from {arch}")
    target = max(lat for _, _, lat in first)

    candidates: list[Candidate] = []
    by_hash: dict[str, int] = {}
    for op, a1, lat1 in first:
        archs = {1: a1}

        def lat_of_k(k: int, op=op, archs=archs, lat1=lat1) -> Optional[float]:
            if k == 1:
                return lat1
            try:
                archs[k] = arch.expand(op, k)
            except ArchError:
                return None
            return latency_fn(archs[k])

        k, lat, capped = find_k(lat_of_k, target, max_k)
        cand_arch = archs[k]
        if cand_arch.hash == arch.hash:
            continue
        if cand_arch.hash in by_hash:
            i = by_hash[cand_arch.hash]
            candidates[i] = dataclasses.replace(candidates[i], aliases=candidates[i].aliases + (op.name,))
            continue
        by_hash[cand_arch.hash] = len(candidates)
        candidates.append(Candidate(op=op.name, dimension=op.dimension, k=k, arch=cand_arch, latency=lat,
                                    capped=capped))
    return target, candidates


def select_candidate(candidates: Sequence[Candidate], latency: float, score: float) -> tuple[int, list[Candidate]]:
    """Step 5: pick d* = argmax (P_d - P) / (L_d - L) over scored candidates.

    The slope is undefined or misleading when a candidate is not slower than N (L_d <= L,
    which only measurement noise or an odd op set produces). Guard:

    * L_d <= L and P_d > P: the candidate *dominates* N (better at no latency cost). Any
      dominating candidate is preferred to every regular one; among them the higher P_d wins.
    * L_d <= L and P_d <= P: no gain, so it is *excluded* and never chosen.
    * L_d > L: ranked by its slope (possibly negative: if every candidate lowers the score, the
      least harmful per unit of latency is taken, as the plain argmax of Algorithm 1 would).

    Ties (equal slope, or equal P_d between dominating candidates) are broken by higher P_d,
    then lower L_d, then the earlier op in the operation order. Returns the index of the choice
    and the candidates annotated with ``slope`` and ``rank``. Raises :class:`SearchError` when
    every candidate is excluded.
    """
    annotated = []
    keys = []
    for i, c in enumerate(candidates):
        if c.score is None:
            raise SearchError(f"candidate {c.op} (k={c.k}) has no score")
        d_lat, d_score = c.latency - latency, c.score - score
        if d_lat > 0:
            c = dataclasses.replace(c, slope=d_score / d_lat, rank="slope")
            keys.append((1, c.slope, c.score, -c.latency, -i))
        elif d_score > 0:
            c = dataclasses.replace(c, slope=None, rank="dominates")
            keys.append((2, c.score, c.score, -c.latency, -i))
        else:
            c = dataclasses.replace(c, slope=None, rank="excluded")
            keys.append(None)
        annotated.append(c)
    eligible = [i for i, key in enumerate(keys) if key is not None]
    if not eligible:
        raise SearchError(
            f"no candidate is slower or better than the current network (latency {latency}, score {score}); "
            "the latency measurements are probably too noisy to drive the search"
        )
    best = max(eligible, key=lambda i: keys[i])
    return best, annotated


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
) -> list[Evaluation]:
    """Evaluate ``(arch, context)`` pairs; results in input order.

    Sequential by default. With an ``executor`` (thread or process pool, or any
    ``concurrent.futures.Executor`` front-end of a work-list runner) all pairs are submitted at
    once; ``evaluate_fn`` must then be picklable for a process pool. ``on_result(i, evaluation)``
    runs in the calling thread as each evaluation finishes, so the journal records it at once.
    If one fails, evaluations not yet started are cancelled, those in flight are still awaited
    and reported, then the first failure (in input order) is raised.
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
) -> list[Step]:
    """Run ``steps`` expansion steps from ``start``; returns ``steps + 1`` records (step 0 = start).

    ``journal`` (default: in memory) caches latencies and evaluations by arch hash; steps it
    already holds are replayed from those caches and must reproduce the recorded choices.
    ``fingerprint`` (any JSON value, e.g. :func:`fingerprint` of the recipe's data, proxy
    schedule and latency settings) is stored in the journal and checked on resume.
    ``progress`` receives one line per measurement/evaluation/step (None: silent).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SearchError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1:
        raise SearchError(f"max_k must be an int >= 1, got {max_k!r}")
    ops = tuple(ops)
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise SearchError(f"expansion op names must be unique, got {names!r}")
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

    def scores(step: int, items: list[tuple[Arch, EvalContext]]) -> dict[str, Evaluation]:
        """Evaluations of ``items`` by arch hash; only the ones missing from the journal are run."""
        out: dict[str, Evaluation] = {}
        todo = []
        for arch, ctx in items:
            ev = journal.evaluation(arch)
            if ev is not None:
                out[arch.hash] = ev
            else:
                todo.append((arch, ctx))
        if not todo:
            return out
        t0 = time.perf_counter()
        done = [0]
        say(f"step {step}: evaluating {len(todo)} architecture(s) ({len(items) - len(todo)} already in the journal)")

        def on_result(i: int, ev: Evaluation) -> None:
            arch, ctx = todo[i]
            journal.record_evaluation(arch, ev, ctx)
            out[arch.hash] = ev
            done[0] += 1
            elapsed = time.perf_counter() - t0
            eta = elapsed / done[0] * (len(todo) - done[0])
            label = ctx.op if ctx.op is None else f"{ctx.op} k={ctx.k}"
            say(f"step {step}: [{done[0]}/{len(todo)}] {label or 'start'} {arch} score={ev.score:.4f} "
                f"({ev.seconds:.1f}s, step ETA {eta:.0f}s)")

        evaluate_candidates(todo, evaluate_fn, executor=executor, on_result=on_result)
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

    current = start
    cur_lat = lat(start)
    start_ctx = EvalContext(step=0, key=start.hash)
    cur_eval = journal.evaluation(start)
    history: list[Step] = []
    if steps == 0 or cur_eval is not None:
        cur_eval = scores(0, [(start, start_ctx)])[start.hash]
        history.append(Step(index=0, arch=start, latency=cur_lat, score=cur_eval.score,
                            metrics=cur_eval.metrics, weights=cur_eval.weights))
        check_replay(history[0])

    for t in range(1, steps + 1):
        replay = journal.recorded_step(t) is not None
        say(f"step {t}/{steps}{' (replayed from the journal)' if replay else ''}: from {current} "
            f"(latency {cur_lat:.6g})")
        target, cands = propose_candidates(current, ops, lat, max_k)
        items = [
            (c.arch, EvalContext(step=t, key=c.arch.hash, op=c.op, dimension=c.dimension, k=c.k, index=i,
                                 total=len(cands)))
            for i, c in enumerate(cands)
        ]
        if cur_eval is None:  # the start network is scored together with the first candidates
            items.insert(0, (start, start_ctx))
        evals = scores(t, items)
        if cur_eval is None:
            cur_eval = evals[start.hash]
            history.append(Step(index=0, arch=start, latency=cur_lat, score=cur_eval.score,
                                metrics=cur_eval.metrics, weights=cur_eval.weights))
            check_replay(history[0])
        cands = [
            dataclasses.replace(c, score=evals[c.arch.hash].score, metrics=evals[c.arch.hash].metrics,
                                weights=evals[c.arch.hash].weights)
            for c in cands
        ]
        best, cands = select_candidate(cands, cur_lat, cur_eval.score)
        chosen = cands[best]
        step = Step(index=t, arch=chosen.arch, latency=chosen.latency, score=chosen.score, op=chosen.op,
                    dimension=chosen.dimension, k=chosen.k, target_latency=target, slope=chosen.slope,
                    candidates=tuple(cands), metrics=chosen.metrics, weights=chosen.weights)
        check_replay(step)
        history.append(step)
        say(f"step {t}/{steps}: chose {chosen.op} x{chosen.k} ({chosen.dimension}) -> {chosen.arch} "
            f"latency {chosen.latency:.6g} (target {target:.6g}) score {chosen.score:.4f}")
        current, cur_lat, cur_eval = chosen.arch, chosen.latency, evals[chosen.arch.hash]
    return history


# --------------------------------------------------------------------------- outputs
def _fraction_text(values) -> str:
    return "{" + ",".join(str(Fraction(v).limit_denominator(4096)) for v in values) + "}"


def _ints_text(values) -> str:
    return "{" + ",".join(str(v) for v in values) + "}"


TABLE_COLUMNS = ("step", "B", "C", "R", "latency", "mIoU", "dimension", "op", "k", "hash")


def table_rows(steps: Sequence[Step]) -> list[dict]:
    """Table-4-style rows (B, C, R in the paper's brace notation)."""
    return [
        {
            "step": s.index,
            "B": _ints_text(s.arch.depth),
            "C": _ints_text(s.arch.width),
            "R": _fraction_text(s.arch.resolution),
            "latency": s.latency,
            "mIoU": s.score,
            "dimension": s.dimension or "",
            "op": s.op or "",
            "k": s.k,
            "hash": s.arch.hash,
        }
        for s in steps
    ]


def write_table(steps: Sequence[Step], csv_path: Union[str, Path], json_path: Union[str, Path],
                latency_unit: str = "ms") -> None:
    """Write the expansion log as CSV and JSON (atomically)."""
    rows = table_rows(steps)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    doc = {
        "latency_unit": latency_unit,
        "columns": list(TABLE_COLUMNS),
        "rows": [{**row, "arch": s.arch.to_dict(), "target_latency": s.target_latency, "slope": s.slope}
                 for row, s in zip(rows, steps)],
    }
    atomic_write_text(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def write_step_recipes(
    base_recipe: Union[Mapping, Any], steps: Sequence[Step], out_dir: Union[str, Path]
) -> list[Path]:
    """One recipe per step, ``out_dir/step_XX.json``: the base recipe with ``model.arch`` set.

    ``base_recipe`` is a recipe mapping (or a :class:`~lps_keras.recipe.Recipe`). Each file is
    validated with :func:`~lps_keras.recipe.recipe_from_dict` before it is written, so a bad
    base recipe fails here rather than in train.py.
    """
    from lps_keras.recipe import recipe_from_dict

    base = base_recipe.to_dict() if hasattr(base_recipe, "to_dict") else json.loads(json.dumps(dict(base_recipe)))
    base_name = base.get("name") or "expanded"
    out_dir = Path(out_dir)
    paths = []
    for s in steps:
        arch = s.arch.to_dict()
        arch.pop("num_classes")  # the recipe's model.num_classes / dataset decides the class count
        model = {k: v for k, v in dict(base.get("model", {})).items() if k != "preset"}
        model["arch"] = arch
        what = "start network" if s.op is None else f"{s.op} x{s.k} ({s.dimension})"
        recipe = {
            **base,
            "name": f"{base_name}_step{s.index:02d}",
            "description": f"Progressive expansion step {s.index} of {base_name}: {what}; {s.arch}; "
                           f"proxy latency {s.latency:.6g}, proxy score {s.score:.4f}.",
            "model": model,
        }
        recipe_from_dict(recipe, source=f"step {s.index} recipe")
        path = out_dir / f"step_{s.index:02d}.json"
        atomic_write_text(path, json.dumps(recipe, indent=2) + "\n")
        paths.append(path)
    return paths


DIMENSION_COLORS = {"depth": "tab:blue", "width": "tab:orange", "resolution": "tab:green"}


def plot_expansion(steps: Sequence[Step], candidates: Optional[Sequence[Candidate]], png_path: Union[str, Path],
                   latency_unit: str = "ms", title: str = "Progressive expansion") -> None:
    """mIoU against latency: each step's segment coloured by its dimension (like the paper's Fig. 7).

    ``candidates`` (default: every candidate held by ``steps``) are drawn as hollow points in
    the colour of their dimension. Uses the Agg canvas directly: no pyplot, no global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if candidates is None:
        candidates = [c for s in steps for c in s.candidates]
    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for c in candidates:
        if c.score is None:
            continue
        ax.scatter([c.latency], [c.score], s=22, facecolors="none",
                   edgecolors=DIMENSION_COLORS.get(c.dimension, "gray"), alpha=0.6, linewidths=1)
    for prev, s in zip(steps, steps[1:]):
        ax.plot([prev.latency, s.latency], [prev.score, s.score], "-", lw=2.2,
                color=DIMENSION_COLORS.get(s.dimension, "gray"))
    if steps:
        ax.scatter([s.latency for s in steps], [s.score for s in steps], s=30, color="black", zorder=3)
        for s in steps:
            ax.annotate(str(s.index), (s.latency, s.score), textcoords="offset points", xytext=(4, -10), fontsize=8)
    handles = [Line2D([0], [0], color=col, lw=2.2, label=dim) for dim, col in DIMENSION_COLORS.items()]
    handles.append(Line2D([0], [0], marker="o", ls="", mfc="none", mec="gray", label="candidates"))
    ax.legend(handles=handles, loc="lower right")
    ax.set_xlabel(f"latency ({latency_unit})")
    ax.set_ylabel("mIoU")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(png_path, buf.getvalue())
