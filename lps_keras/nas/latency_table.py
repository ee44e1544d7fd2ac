"""The latency lookup table (per operator, input shape and backend), its builder and the
expected-latency cost loss.

The table is a JSON file built on the target device by :func:`build_latency_table`: every
operator a space's network may run (:meth:`SearchSpace.op_specs`) as a single-operator Keras model
(fused, random biases: the form whole networks are timed in) timed by
:func:`lps_keras.latency.measure_latency` (or any ``measure`` with its signature). During the search
the expected latency is ``sum_t lat[t] * prod_(d, o) softmax(alpha_d)[o]`` over the space's
:class:`~lps_keras.nas.space.CostTerm` s: exact for independent decisions and differentiable in the
alphas. It uses ``softmax(alpha)`` rather than the Gumbel sample, so that the cost gradient does not
depend on the noise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lps_keras.fileio import atomic_write_json
from lps_keras.nas.errors import NASError
from lps_keras.nas.space import CostTerm, OpSpec, SearchSpace

#: 2: operators timed in the deploy form whole networks are timed in (format 1 timed them unfused, with BN).
TABLE_FORMAT = 2


class LatencyTable:
    """``entries[op key] = median ms`` on ``backend`` (and ``device``), plus ``fixed_ms``: the
    unsearched layers' latency, added to every expected latency (0 when not measured), or
    ``fixed_by_option`` (``{"decision": d, "ms": [one per option]}``): that cost per option of decision
    ``d``, which then replaces ``fixed_ms``; and ``calibration``: how they were found
    (:func:`calibrate_table`), if they were."""

    def __init__(self, backend: str, entries: dict | None = None, device: str = "", fixed_ms: float = 0.0,
                 calibration: dict | None = None, fixed_by_option: dict | None = None, versions: dict | None = None):
        self.backend = backend
        # library versions and runtime settings it was timed with (lps_keras.latency.library_versions), as a
        # latency profile records them: a table used with other settings (onnxruntime spinning, oneDNN) is warned of
        self.versions = dict(versions or {})
        self.entries = dict(entries or {})
        self.device = device
        self.fixed_ms = float(fixed_ms)
        self.calibration = calibration
        self.fixed_by_option = fixed_by_option

    def __getitem__(self, spec: OpSpec) -> float:
        try:
            return self.entries[spec.key]
        except KeyError:
            raise NASError(f"latency table ({self.backend}) has no entry {spec.key!r}; rebuild it for this "
                           "space and input size") from None

    def __contains__(self, spec: OpSpec) -> bool:
        return spec.key in self.entries

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "backend": self.backend, "device": self.device, "fixed_ms": self.fixed_ms,
                "fixed_by_option": self.fixed_by_option, "calibration": self.calibration, "versions": self.versions,
                "entries": dict(sorted(self.entries.items()))}

    def save(self, path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path, backend: str | None = None) -> LatencyTable:
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise NASError(f"{path}: latency table not found") from None
        except json.JSONDecodeError as e:
            raise NASError(f"{path}: not a latency table (invalid JSON: {e})") from None
        ok = isinstance(data, dict) and data.get("format") == TABLE_FORMAT and isinstance(data.get("entries"), dict)
        if isinstance(data, dict) and data.get("format") == 1:
            raise NASError(f"{path}: a latency table of format 1 (operators timed unfused, with BN, unlike the "
                           "whole networks of its calibration); rebuild it (move it aside and rerun)")
        if not ok:
            raise NASError(f"{path}: not a latency table of format {TABLE_FORMAT}")
        if backend is not None and data.get("backend") != backend:
            raise NASError(f"{path}: the table is for backend {data.get('backend')!r}, not {backend!r}")
        from lps_keras.latency.profile import warn_settings

        warn_settings({"backend": data["backend"], "versions": data.get("versions") or {}, "_where": str(path)})
        return cls(data["backend"], data["entries"], data.get("device", ""), data.get("fixed_ms", 0.0),
                   data.get("calibration"), data.get("fixed_by_option"), data.get("versions"))


def build_latency_table(space: SearchSpace, input_size: tuple[int, int], backend: str = "tf",
                        measure: Callable | None = None, path=None, progress: Callable | None = None,
                        **measure_kwargs) -> LatencyTable:
    """Time every operator of ``space`` at ``input_size`` on ``backend``; return (and save) the table.

    ``measure(model, backend=..., input_shape=(1, H, W, C), **measure_kwargs)`` returns stats with
    ``median_ms`` (default :func:`lps_keras.latency.measure_latency`). With ``path``, an existing
    table there is continued (entries already measured are kept) and the table is saved after every
    entry, so an interrupted build resumes where it stopped.
    """
    if measure is None:
        from lps_keras.latency import measure_latency as measure
    table = LatencyTable(backend)
    if path is not None and os.path.exists(path):
        table = LatencyTable.load(path, backend=backend)
    here = device_label(backend)
    specs = space.op_specs(input_size)
    missing = sum(spec not in table for spec in specs)
    if missing and table.entries and table.device and here and table.device != here:
        # One table holds one device's timings: continuing it here would mix two machines under the first's name.
        raise NASError(f"{path}: a partial latency table measured on {table.device!r}; this machine is {here!r}. "
                       f"Finish it there ({missing} operator(s) left), or move it aside to build one here")
    if not table.device:
        table.device = here
    if not table.versions:
        table.versions = _versions(backend)
    for i, spec in enumerate(specs):
        if spec in table:
            continue
        stats = measure(space.op_model(spec), backend=backend, input_shape=(1, *spec.input_shape), **measure_kwargs)
        table.entries[spec.key] = float(stats.median_ms)
        if path is not None:
            table.save(path)
        if progress is not None:
            progress(i + 1, len(specs))
    if path is not None:
        table.save(path)
    return table


def table_latency(space: SearchSpace, table: LatencyTable, input_size, choices) -> float:
    """The table's latency of the discrete network ``choices`` (one option index per decision), ``fixed_ms``
    included."""
    decisions = space.decisions()
    probs = []
    for d, c in zip(decisions, choices):
        p = np.zeros(len(d.options), np.float32)
        p[c] = 1.0
        probs.append(p)
    expected = ExpectedLatency(space.cost_terms(tuple(input_size)), table, [len(d.options) for d in decisions])
    return float(np.asarray(expected(probs)))


def calibrate_table(space: SearchSpace, table: LatencyTable, input_size, backend: str, measure: Callable | None = None,
                    path=None, **measure_kwargs) -> LatencyTable:
    """Set ``table.fixed_ms`` to what the operators' sum misses on the space's hand-designed network.

    That network (:meth:`SearchSpace.reference`) is timed whole; ``fixed_ms`` = its time minus the
    table's sum over its own operators: the unsearched stem and head, plus what timing operators one
    by one gets wrong (per-call overhead, fusion across layers), assumed the same for every path.
    It may be negative (single-operator models pay a call overhead each). Where the space names a
    :meth:`~SearchSpace.calibration_decision`, the network is also timed with that decision at each other
    option (the rest as the reference), and ``fixed_by_option`` holds one such value per option. Done
    once per table.
    """
    ref = space.reference()
    if ref is None or table.calibration is not None:
        return table
    if measure is None:
        from lps_keras.latency import measure_latency as measure
    config, choices = ref
    h, w = (int(v) for v in input_size)

    def residual(network, picks) -> tuple[float, float]:
        network_ms = float(measure(network, backend=backend, input_shape=(1, h, w, 3), **measure_kwargs).median_ms)
        return network_ms, table_latency(space, LatencyTable(table.backend, table.entries), (h, w), picks)

    network_ms, ops_ms = residual(config, choices)
    table.fixed_ms = network_ms - ops_ms
    calibration = {"network_ms": network_ms, "ops_ms": ops_ms, "input_size": [h, w]}
    d = space.calibration_decision()
    if d is not None:
        per_option = []
        for o in range(len(space.decisions()[d].options)):
            if o == choices[d]:
                per_option.append({"network_ms": network_ms, "ops_ms": ops_ms})
                continue
            picks = [o if i == d else c for i, c in enumerate(choices)]
            n, s = residual(space.derive_from_choices(picks), picks)
            per_option.append({"network_ms": n, "ops_ms": s})
        table.fixed_by_option = {"decision": d, "ms": [p["network_ms"] - p["ops_ms"] for p in per_option]}
        calibration["by_option"] = per_option
    table.calibration = calibration
    if path is not None:
        table.save(path)
    return table


def _versions(backend: str) -> dict:
    try:
        from lps_keras.latency.backends import library_versions
        return library_versions(backend)
    except Exception:  # a record only, as the device label: a table built without it still works
        return {}


def device_label(backend: str = "tf") -> str:
    """The device ``backend`` times on here (:func:`lps_keras.latency.backends.device_name`); "" if unknown."""
    try:
        from lps_keras.latency.backends import device_name
        return device_name(backend)
    except Exception:  # the name is a label only; a table built without it still works
        return ""


class ExpectedLatency:
    """``E[latency](probs)`` for a space's cost terms and a table, vectorised once.

    ``probs``: one probability vector per decision (``softmax(alpha)``), numpy or tensors.
    """

    def __init__(self, terms: Sequence[CostTerm], table: LatencyTable, num_options: Sequence[int]):
        self.offsets = np.concatenate([[0], np.cumsum(num_options)]).astype(np.int64)
        width = max([len(t.factors) for t in terms] + [1])
        one = int(self.offsets[-1])  # index of a constant 1.0 appended to the probabilities
        self.index = np.full((len(terms), width), one, np.int32)
        for i, term in enumerate(terms):
            for j, (d, o) in enumerate(term.factors):
                self.index[i, j] = self.offsets[d] + o
        self.latency = np.array([table[t.op] for t in terms], np.float32)
        self.fixed_ms = table.fixed_ms
        self.fixed_decision, self.fixed_per_option = None, None
        if table.fixed_by_option is not None:
            d, per = int(table.fixed_by_option["decision"]), table.fixed_by_option["ms"]
            if not 0 <= d < len(num_options) or len(per) != num_options[d]:
                raise NASError(f"latency table: fixed_by_option names decision {d} with {len(per)} values; this "
                               f"space has {len(num_options)} decisions; rebuild the table for it")
            self.fixed_decision, self.fixed_per_option = d, np.asarray(per, np.float32)

    def __call__(self, probs):
        from keras import ops

        flat = ops.concatenate([ops.cast(p, "float32") for p in probs] + [ops.ones((1,), "float32")], axis=0)
        weight = ops.prod(ops.take(flat, self.index, axis=0), axis=1)
        if self.fixed_decision is None:
            return ops.sum(weight * self.latency) + self.fixed_ms
        fixed = ops.sum(ops.cast(probs[self.fixed_decision], "float32") * self.fixed_per_option)
        return ops.sum(weight * self.latency) + fixed


def cost_loss(expected_ms, budget_ms: float):
    """``|E[latency] / R - 1|``: pulls the expected latency toward the budget ``R`` from either side
    (HMSeg, as issue 27 quotes it, states the pull toward R, not the formula; the relative form keeps the loss weight
    independent of the device's speed)."""
    from keras import ops

    if not budget_ms > 0:
        raise NASError(f"latency budget must be > 0 ms, got {budget_ms!r}")
    return ops.abs(expected_ms / budget_ms - 1.0)
