"""The search's records (evaluations, candidates, steps) and its journal: one JSON file, rewritten atomically.

Every latency, every finished evaluation and every chosen step goes into a
:class:`SearchJournal`, so a killed search reruns without re-measuring or re-training anything it
finished. The journal is the search's own record of what it saw (the values its choices were made
from, replayed on resume), not a measurement cache; measurements are cached by
:class:`lps_keras.latency.LatencyCache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from lps_keras.arch import Arch, ExpansionOp
from lps_keras.errors import LPSError
from lps_keras.fileio import atomic_write_text

JOURNAL_FORMAT = "lps_keras.search_journal"
JOURNAL_VERSION = 2  # 2: one evaluation per (arch, seed); version-1 journals (one per arch) are read as seed 0


class JournalError(LPSError, ValueError):
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
    seed: int = 0  # which proxy seed (0 .. search.proxy.seeds - 1, more when racing)
    parent_weights: Optional[str] = None  # the parent's (seed 0) weights, for a warm start; None for step 0


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
    scores: tuple[float, ...] = ()  # one per seed, in seed order; ``score`` is their mean
    score_sd: Optional[float] = None  # sample sd of ``scores`` (None with one seed)
    score_se: Optional[float] = None  # standard error of the mean
    error: Optional[str] = None  # its evaluation failed after the executor's retries (rank "failed")

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
            "scores": list(self.scores),
            "score_sd": self.score_sd,
            "score_se": self.score_se,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(
            op=d["op"], dimension=d["dimension"], k=d["k"], arch=Arch.from_dict(d["arch"]), latency=d["latency"],
            aliases=tuple(d.get("aliases", ())), capped=d.get("capped", False), score=d.get("score"),
            slope=d.get("slope"), rank=d.get("rank"), metrics=d.get("metrics", {}), weights=d.get("weights"),
            scores=tuple(d.get("scores") or (() if d.get("score") is None else (d["score"],))),
            score_sd=d.get("score_sd"), score_se=d.get("score_se"),
            error=d.get("error"),
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
    scores: tuple[float, ...] = ()  # the chosen network's score per seed; ``score`` is their mean
    score_sd: Optional[float] = None
    score_se: Optional[float] = None
    runner_up: Optional[str] = None  # op of the second-best candidate (see lps_keras.search.racing)
    margin: Optional[float] = None  # winner's slope minus the runner-up's (P_d for dominating candidates)
    margin_se: Optional[float] = None  # its standard error
    decided: Optional[bool] = None  # margin > z * margin_se; None: not assessable (one seed)
    racing_evaluations: int = 0  # extra (candidate, seed) trainings racing spent on this step

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
            "scores": list(self.scores),
            "score_sd": self.score_sd,
            "score_se": self.score_se,
            "runner_up": self.runner_up,
            "margin": self.margin,
            "margin_se": self.margin_se,
            "decided": self.decided,
            "racing_evaluations": self.racing_evaluations,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Step:
        return cls(
            index=d["step"], arch=Arch.from_dict(d["arch"]), latency=d["latency"], score=d["score"], op=d.get("op"),
            dimension=d.get("dimension"), k=d.get("k", 0), target_latency=d.get("target_latency"),
            slope=d.get("slope"), candidates=tuple(Candidate.from_dict(c) for c in d.get("candidates", ())),
            metrics=d.get("metrics", {}), weights=d.get("weights"),
            scores=tuple(d.get("scores") or (d["score"],)), score_sd=d.get("score_sd"), score_se=d.get("score_se"),
            runner_up=d.get("runner_up"), margin=d.get("margin"), margin_se=d.get("margin_se"),
            decided=d.get("decided"), racing_evaluations=d.get("racing_evaluations", 0),
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
    trained at most once per (arch, seed) per journal, whichever step meets it.
    """

    def __init__(self, path: Union[str, Path, None] = None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.RLock()
        self.setup: Optional[dict] = None
        self.latencies: dict[str, dict] = {}
        self.evaluations: dict[str, dict] = {}
        self.failures: dict[str, dict] = {}  # evaluations that failed after their retries (optional key)
        self.steps: list[dict] = []
        if self.path is not None and self.path.exists():
            self._load()

    @property
    def where(self) -> str:
        """The journal's file name for messages."""
        return str(self.path) if self.path is not None else "in-memory journal"

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            # A binary file: json would say neither which file nor that it is not text.
            raise JournalError(f"{self.path}: search journal is not UTF-8 text (byte {e.start}): "
                               "not a journal this code wrote; move it away to start over") from None
        except json.JSONDecodeError as e:
            raise JournalError(f"{self.path}: search journal is not valid JSON (truncated or damaged?): {e}; "
                               "move it away to start over") from None
        except RecursionError:
            raise JournalError(f"{self.path}: search journal nests too deeply to be one this code wrote") from None
        if not isinstance(raw, dict) or raw.get("format") != JOURNAL_FORMAT:
            raise JournalError(f"{self.path}: not a search journal (expected format {JOURNAL_FORMAT!r})")
        version = raw.get("version")
        if version not in (1, JOURNAL_VERSION):
            raise JournalError(
                f"{self.path}: search journal version {version!r} is not supported "
                f"(this code reads versions 1 and {JOURNAL_VERSION})"
            )
        try:
            self.setup = raw["setup"]
            self.latencies = dict(raw["latencies"])
            self.evaluations = dict(raw["evaluations"])
            self.steps = list(raw["steps"])
            self.failures = dict(raw.get("failures", {}))  # optional: journals before it load
            if version == 1:
                # One score per arch, trained with the recipe's seed: that is seed 0 here (same run
                # directory too), so an old search resumes, and gains seeds, without retraining.
                self.evaluations = {h: _v1_entry(e) for h, e in self.evaluations.items()}
        except KeyError as e:
            raise JournalError(f"{self.path}: search journal is missing {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise JournalError(f"{self.path}: search journal has the wrong structure ({e})") from None
        problem = _structure_problem(self.setup, self.latencies, self.evaluations, self.failures, self.steps)
        if problem:
            # Checked here, not where an entry is used: a wrong shape would otherwise surface as an
            # AttributeError traceback deep in the search, maybe hours in.
            raise JournalError(f"{self.path}: search journal has the wrong structure: {problem}")

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            "format": JOURNAL_FORMAT,
            "version": JOURNAL_VERSION,
            "setup": self.setup,
            "latencies": self.latencies,
            "evaluations": self.evaluations,
            "failures": self.failures,
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
    def evaluations_of(self, arch: Arch) -> dict[int, Evaluation]:
        """Every finished evaluation of ``arch``, by seed."""
        with self._lock:
            e = self.evaluations.get(arch.hash)
            if e is None:
                return {}
            return {int(seed): Evaluation(score=r["score"], metrics=r.get("metrics", {}), weights=r.get("weights"),
                                          seconds=r.get("seconds"))
                    for seed, r in e["seeds"].items()}

    def evaluation(self, arch: Arch, seed: int = 0) -> Optional[Evaluation]:
        """The evaluation of ``arch`` with ``seed``, or None if it has not finished."""
        return self.evaluations_of(arch).get(seed)

    def record_evaluation(self, arch: Arch, evaluation: Evaluation, context: Optional[EvalContext] = None) -> None:
        """Record one (arch, seed) evaluation (the seed is ``context.seed``, 0 without a context)."""
        with self._lock:
            entry = self.evaluations.setdefault(arch.hash, {
                "arch": arch.to_dict(),
                "step": context.step if context else None,
                "op": context.op if context else None,
                "k": context.k if context else None,
                "seeds": {},
            })
            entry["seeds"][str(context.seed if context else 0)] = {
                "score": evaluation.score,
                "metrics": dict(evaluation.metrics),
                "weights": evaluation.weights,
                "seconds": evaluation.seconds,
            }
            entry["seeds"] = dict(sorted(entry["seeds"].items(), key=lambda kv: int(kv[0])))
            self._save()

    def failure(self, arch: Arch) -> Optional[str]:
        """The error of ``arch``'s last failed evaluation, if it has no evaluation since."""
        with self._lock:
            if arch.hash in self.evaluations:
                return None
            entry = self.failures.get(arch.hash)
            return None if entry is None else entry["error"]

    def record_failure(self, arch: Arch, error: str, context: Optional[EvalContext] = None) -> None:
        with self._lock:
            self.failures[arch.hash] = {
                "arch": arch.to_dict(),
                "error": str(error),
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


def _structure_problem(setup, latencies: dict, evaluations: dict, failures: dict, steps: list) -> Optional[str]:
    """What is wrong with a loaded journal's shape (the fields the search reads), or None."""
    if setup is not None and not isinstance(setup, dict):
        return f"'setup' is {_short_json(setup, 60)}, not an object"
    for key, entry in latencies.items():
        if not isinstance(entry, dict) or not _is_number(entry.get("latency")):
            return f"latencies[{key!r}] is {_short_json(entry, 60)}, not an object with a numeric 'latency'"
    for key, entry in evaluations.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("seeds"), dict):
            return f"evaluations[{key!r}] is {_short_json(entry, 60)}, not an object with 'seeds'"
        for seed, r in entry["seeds"].items():
            if not str(seed).isdigit() or not isinstance(r, dict) or not _is_number(r.get("score")) \
                    or not isinstance(r.get("metrics", {}), dict):
                return f"evaluations[{key!r}].seeds[{seed!r}] is {_short_json(r, 60)}, not an object with a 'score'"
    for key, entry in failures.items():
        if not isinstance(entry, dict) or "error" not in entry:
            return f"failures[{key!r}] is {_short_json(entry, 60)}, not an object with an 'error'"
    for i, d in enumerate(steps):
        try:
            Step.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return f"steps[{i}] is not a step ({type(e).__name__}: {e})"
    return None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _v1_entry(e: dict) -> dict:
    return {
        "arch": e["arch"], "step": e.get("step"), "op": e.get("op"), "k": e.get("k"),
        "seeds": {"0": {"score": e["score"], "metrics": e.get("metrics", {}), "weights": e.get("weights"),
                        "seconds": e.get("seconds")}},
    }


def _short_json(x: Any, limit: int = 300) -> str:
    text = json.dumps(x, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
