"""What a search space is: decisions, latency terms, a supernet and a derivation (pure Python).

The engine (:mod:`.latency_table`, :mod:`.search_tf`) only sees this interface, so a second space
(LGCNet's cell space: SNAS one-hot masks per cell edge, a GCN between adjacent cells' alphas) is a
second :class:`SearchSpace` subclass and a second entry of :data:`lps_keras.nas.SPACES`, without
touching the engine. A GCN over the alphas is the space's :meth:`SearchSpace.logits` (it maps the
raw alphas to the logits the sampler, the expected latency and the derivation see), its weights
among :meth:`SearchSpace.arch_variables` (trained by the architecture optimiser).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

from lps_keras.nas.errors import NASError


@dataclasses.dataclass(frozen=True)
class Decision:
    """One architecture choice: ``options`` are JSON-able labels; one alpha per option."""

    name: str
    options: tuple

    def __post_init__(self):
        if len(self.options) < 1:
            raise NASError(f"decision {self.name!r} has no options")


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One operator at one input shape: a key of the latency table.

    ``kind`` names the operator family (``"ir"``, ``"resize"``, ...), ``params`` its arguments as
    sorted ``(name, value)`` pairs, ``input_shape`` the ``(H, W, C)`` it runs on (batch 1).
    """

    kind: str
    params: tuple
    input_shape: tuple

    @classmethod
    def of(cls, kind: str, input_shape, **params) -> OpSpec:
        return cls(kind, tuple(sorted(params.items())), tuple(int(v) for v in input_shape))

    @property
    def key(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.kind}({args})@{'x'.join(str(v) for v in self.input_shape)}"

    def param(self, name: str):
        return dict(self.params)[name]


@dataclasses.dataclass(frozen=True)
class CostTerm:
    """``op`` runs with probability ``prod(p[d][o] for d, o in factors)`` (decisions independent)."""

    op: OpSpec
    factors: tuple  # ((decision index, option index), ...)


class SearchSpace(abc.ABC):
    """A search space: what is searched, what it costs, how to train it and what it derives to."""

    name: str = ""

    @abc.abstractmethod
    def decisions(self) -> list[Decision]:
        """The architecture decisions, in the order of the supernet's alphas."""

    @abc.abstractmethod
    def cost_terms(self, input_size: tuple[int, int]) -> list[CostTerm]:
        """Every (operator, shape) the network may run at ``input_size`` and when it runs."""

    @abc.abstractmethod
    def op_model(self, spec: OpSpec):
        """A single-operator Keras model of ``spec`` (input ``spec.input_shape``), to be timed: in the form
        whole networks are timed in (deploy, random biases: :func:`~lps_keras.latency.runners.random_deploy_model`),
        since the table's calibration subtracts the operators' sum from a whole network's time."""

    @abc.abstractmethod
    def build_supernet(self, **kwargs):
        """The supernet: a Keras model with one alpha vector per decision (``model.alphas``)."""

    @abc.abstractmethod
    def derive_from_choices(self, choices: Sequence[int]) -> Any:
        """The family config of the discrete network that picks option ``choices[i]`` of decision i."""

    def arch_variables(self, supernet) -> list:
        """The variables the architecture optimiser trains: the supernet's alphas, plus the weights of
        a learned map of them where :meth:`logits` has one (LGCNet's GCN)."""
        return list(supernet.alphas)

    def logits(self, supernet, alphas: Sequence) -> list:
        """One logit vector per decision, from the alphas: what the sampler draws from, the expected
        latency weighs and the derivation takes the argmax of. The alphas themselves by default."""
        return list(alphas)

    def reference(self) -> tuple[Any, list[int]] | None:
        """The hand-designed network the space is built around, as ``(config, choices)``, or ``None``.

        With it, :func:`~.latency_table.calibrate_table` times that network whole and puts what the
        operators' sum misses (stem, head, per-layer overhead) into the table's ``fixed_ms``.
        """
        return None

    def derive(self, alphas: Sequence[Sequence[float]]) -> Any:
        """The discrete network of ``alphas`` (argmax of every decision's alphas)."""
        decisions = self.decisions()
        if len(alphas) != len(decisions):
            raise NASError(f"{self.name}: expected {len(decisions)} alpha vectors, got {len(alphas)}")
        choices = []
        for d, a in zip(decisions, alphas):
            a = [float(v) for v in a]
            if len(a) != len(d.options):
                raise NASError(f"{self.name}: alphas of {d.name!r} need {len(d.options)} values, got {a!r}")
            choices.append(max(range(len(a)), key=a.__getitem__))  # first maximum on ties
        return self.derive_from_choices(choices)

    def calibration_decision(self) -> int | None:
        """The decision whose option changes what the operators' sum misses (the unsearched layers' cost), or
        ``None``. With one, :func:`~.latency_table.calibrate_table` times the reference network at each of
        its options and the table's fixed cost becomes a per-option vector, weighted by that decision's
        probabilities (HMSeg: the LCF head runs on the high-resolution branch, whose ratio sets its size)."""
        return None

    def op_specs(self, input_size: tuple[int, int]) -> list[OpSpec]:
        """The distinct operators to time for ``input_size`` (the latency table's rows)."""
        seen = {}
        for term in self.cost_terms(input_size):
            seen.setdefault(term.op.key, term.op)
        return list(seen.values())
