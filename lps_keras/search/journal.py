"""The search's records (evaluations, candidates, steps) and its journal: one JSON file, rewritten atomically.

Every latency, every finished evaluation and every chosen step goes into a
:class:`SearchJournal`, so a killed search reruns without re-measuring or re-training anything it
finished. The journal is the search's own record of what it saw (the values its choices were made
from, replayed on resume), not a measurement cache; measurements are cached by
:class:`lps_keras.latency.LatencyCache`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from lps_keras.arch import Arch, ExpansionOp
from lps_keras.errors import LPSError
from lps_keras.fileio import atomic_write_text
from lps_keras.search.records import Candidate, EvalContext, Evaluation, Step  # noqa: F401 - re-exported

JOURNAL_FORMAT = "lps_keras.search_journal"
# 3: the parent is scored again at every step with that step's seeds (step * 1000 + i), steps carry the verdict of
# lps_keras.search.decision and the step's paired latencies. Versions 1 and 2 (seeds 0.. at every step, a fixed-z
# rule) are refused with a message: their steps cannot be replayed by this rule.
JOURNAL_VERSION = 3


class JournalError(LPSError, ValueError):
    """A journal file is unreadable or belongs to a different search; the message names the file."""


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
        self.latency_sets: dict[str, dict] = {}  # step -> {arch hash: [latency, SE of its difference to the parent]}
        # step -> where that step's latencies were measured (backend, device, CPU flags); optional key, version 3
        self.latency_devices: dict[str, str] = {}
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
        if version in (1, 2):
            raise JournalError(
                f"{self.path}: search journal version {version} was written by an earlier search (the same seeds "
                "at every step, the parent's score carried over from the step before, a fixed 2-SE rule); this "
                "version re-scores the parent at every step with fresh seeds and decides by "
                "lps_keras.search.decision, so it cannot replay those steps. Keep the old output directory for its "
                "results and run the search into a new one (--output)")
        if version != JOURNAL_VERSION:
            raise JournalError(
                f"{self.path}: search journal version {version!r} is not supported (this code reads version "
                f"{JOURNAL_VERSION})"
            )
        try:
            self.setup = raw["setup"]
            self.latencies = dict(raw["latencies"])
            self.evaluations = dict(raw["evaluations"])
            self.steps = list(raw["steps"])
            self.failures = dict(raw.get("failures", {}))
            self.latency_sets = dict(raw.get("latency_sets", {}))
            devices = raw.get("latency_devices", {})
        except KeyError as e:
            raise JournalError(f"{self.path}: search journal is missing {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise JournalError(f"{self.path}: search journal has the wrong structure ({e})") from None
        problem = _structure_problem(self.setup, self.latencies, self.evaluations, self.failures, self.steps) \
            or _latency_sets_problem(self.latency_sets) or _latency_devices_problem(devices)
        if problem:
            # Checked here, not where an entry is used: a wrong shape would otherwise surface as an
            # AttributeError traceback deep in the search, maybe hours in.
            raise JournalError(f"{self.path}: search journal has the wrong structure: {problem}")
        self.latency_devices = dict(devices)

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
            "latency_sets": self.latency_sets,
            "latency_devices": self.latency_devices,
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
                        "Use a new output directory to start a new search (its candidates' run directories were "
                        "trained with the old setup, so deleting only the journal does not start afresh)."
                    )

    # ------------------------------------------------------------- latencies
    def latency(self, arch: Arch) -> Optional[float]:
        with self._lock:
            entry = self.latencies.get(arch.hash)
            return None if entry is None else entry["latency"]

    def latency_se(self, arch: Arch) -> float:
        """The SE recorded with :meth:`latency` (of its paired difference to the parent it was timed with); 0
        when none was (a single measurement, or a journal from before SEs were kept: it replays as decided)."""
        with self._lock:
            entry = self.latencies.get(arch.hash)
            return 0.0 if entry is None else float(entry.get("se", 0.0))

    def record_latency(self, arch: Arch, latency: float, se: Optional[float] = None) -> None:
        with self._lock:
            self.latencies[arch.hash] = {"arch": arch.to_dict(), "latency": latency}
            if se is not None:
                self.latencies[arch.hash]["se"] = float(se)
            self._save()

    def latency_set(self, step: int) -> dict[str, tuple[float, float]]:
        """The paired latencies recorded for ``step``: {arch hash: (latency, SE of the difference to the parent)}."""
        with self._lock:
            return {h: (float(v[0]), float(v[1])) for h, v in self.latency_sets.get(str(step), {}).items()}

    def record_latency_set(self, step: int, values: Mapping[str, tuple[float, float]]) -> None:
        with self._lock:
            self.latency_sets[str(step)] = {h: [float(v[0]), float(v[1])] for h, v in values.items()}
            self._save()

    def latency_device(self, step: int) -> Optional[str]:
        """Where the latencies measured at ``step`` were measured (backend, device, CPU flags), if recorded."""
        with self._lock:
            return self.latency_devices.get(str(step))

    def record_latency_device(self, step: int, text: str) -> None:
        with self._lock:
            self.latency_devices[str(step)] = str(text)
            self._save()

    def latency_device_map(self) -> dict[int, str]:
        """Every recorded :meth:`latency_device`, by step."""
        with self._lock:
            return {int(step): text for step, text in self.latency_devices.items()}

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
        if not isinstance(entry, dict) or not _is_number(entry.get("latency")) \
                or not _is_number(entry.get("se", 0.0)):
            return (f"latencies[{key!r}] is {_short_json(entry, 60)}, not an object with a numeric 'latency' "
                    "(and optional numeric 'se')")
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


def _latency_sets_problem(sets: dict) -> Optional[str]:
    for step, entry in sets.items():
        ok = isinstance(entry, dict) and all(isinstance(v, list) and len(v) == 2 and all(map(_is_number, v))
                                             for v in entry.values())
        if not ok:
            return f"latency_sets[{step!r}] is {_short_json(entry, 60)}, not {{hash: [latency, se]}}"
    return None


def _latency_devices_problem(devices) -> Optional[str]:
    if not isinstance(devices, dict):
        return f"'latency_devices' is {_short_json(devices, 60)}, not an object {{step: text}}"
    for step, text in devices.items():
        if not (step.isascii() and step.isdigit()) or not isinstance(text, str):
            return (f"latency_devices[{step!r}] is {_short_json(text, 60)}, not a text under a step number "
                    "(where that step's latencies were measured)")
    return None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _short_json(x: Any, limit: int = 300) -> str:
    text = json.dumps(x, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
