"""What a search cost: wall seconds per phase over every run of a search directory (``cost.json``)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from lps_keras.fileio import atomic_write_json


class SearchCost:
    """Wall seconds per phase, added up over every run of the directory (``cost.json``, saved after each
    phase): a search stopped and resumed reports what it cost in all. The search's cost in CPU-hours is
    ``wall_hours * cpu_count`` on a machine the search had to itself.

    A phase also records when it began (``running``); a run killed inside it (``kill -9``, a session
    ending) never reaches its ``finally``, so the next run adds that phase's time up to the newest file the
    killed run wrote in the directory (the search's log and checkpoint, the table: each written as the
    work goes; files written since ``started``, by this run, do not count), instead of losing it."""

    def __init__(self, path: Path, started: float):
        self.path = path
        data = json.loads(path.read_text()) if path.exists() else {}
        self.seconds = data.get("seconds", {})
        running = data.get("running")
        if running:
            times = (f.stat().st_mtime for f in path.parent.rglob("*") if f.is_file() and f != path)
            newest = max((t for t in times if t < started), default=running["since"])
            self.seconds[running["phase"]] = self.seconds.get(running["phase"], 0.0) + max(
                0.0, newest - running["since"])
            atomic_write_json(self.path, {"seconds": self.seconds})

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.time()
        atomic_write_json(self.path, {"seconds": self.seconds, "running": {"phase": name, "since": t0}})
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + (time.time() - t0)
            atomic_write_json(self.path, {"seconds": self.seconds})

    def summary(self) -> dict:
        import os

        total = sum(self.seconds.values())
        return {"seconds": {k: round(v, 1) for k, v in self.seconds.items()}, "wall_hours": total / 3600,
                "cpu_count": os.cpu_count()}
