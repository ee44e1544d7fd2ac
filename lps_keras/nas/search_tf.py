"""The search loop on TensorFlow: weights and alphas updated in one step, each by its own
optimiser (HMSeg), with an atomic, resumable checkpoint.

TensorFlow-specific (``tf.GradientTape``, ``tf.function``, stateless random draws): the rest of
:mod:`lps_keras.nas` is keras.ops and plain Python.

One step: draw uniforms from the stateless seed ``(seed, step * D + d)`` for decision ``d``
(so a resumed search samples exactly as an uninterrupted one), straight-through Gumbel-softmax at
the schedule's temperature, forward the sampled path, loss = task loss + ``cost_weight`` *
cost loss of the expected latency, one gradient of both, each optimiser applies its part.
Candidates that were not sampled get zero gradients (an optimiser with momentum still moves them,
as in a dense update). The task loss is an argument: ``loss_fn(labels, logits) -> scalar``.

Checkpoint (every ``every`` steps and at the end): one ``.npz`` written atomically
(:func:`lps_keras.fileio.atomic_write_bytes`) with the step, every model variable (weights, BN
statistics, alphas) and both optimisers' variables, so ``kill -9`` and a rerun continue from the
last saved step. ``data(step)`` must give the batch of ``step`` (deterministic), so that the rerun
sees the batches the killed run would have.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from keras import ops

from lps_keras.fileio import atomic_write_bytes
from lps_keras.nas.gumbel import NASError, TemperatureSchedule, gumbel_softmax
from lps_keras.nas.latency_table import ExpectedLatency, LatencyTable, cost_loss

CHECKPOINT_FORMAT = 1


class Search:
    """A search of ``space`` with ``table`` at ``input_size`` (H, W) toward ``budget_ms``."""

    def __init__(self, space, table: LatencyTable, input_size, budget_ms: float, loss_fn: Callable,
                 weight_optimizer, arch_optimizer, schedule: TemperatureSchedule, cost_weight: float = 1.0,
                 seed: int = 0, supernet=None, run_eagerly: bool = False):
        self.space = space
        self.supernet = supernet if supernet is not None else space.build_supernet()
        decisions = space.decisions()
        self.expected = ExpectedLatency(space.cost_terms(tuple(input_size)), table,
                                        [len(d.options) for d in decisions])
        if not budget_ms > 0:
            raise NASError(f"latency budget must be > 0 ms, got {budget_ms!r}")
        self.budget_ms, self.cost_weight, self.seed = float(budget_ms), float(cost_weight), int(seed)
        self.loss_fn, self.schedule = loss_fn, schedule
        self.w_opt, self.a_opt = weight_optimizer, arch_optimizer
        self.arch_vars = space.arch_variables(self.supernet)
        arch_ids = {id(v) for v in self.arch_vars}
        self.weight_vars = [v for v in self.supernet.trainable_variables if id(v) not in arch_ids]
        self.w_opt.build(self.weight_vars)
        self.a_opt.build(self.arch_vars)
        self.step = 0
        self.last = {}
        # Eager steps skip the supernet's trace (~45 s on a CPU): for debugging and tiny test searches.
        self._step_fn = self._train_step if run_eagerly else tf.function(self._train_step)

    def logits(self):
        """Per-decision logits (:meth:`SearchSpace.logits` of the supernet's alphas)."""
        return self.space.logits(self.supernet, self.supernet.alphas)

    def samples(self, tau, step):
        """Straight-through samples of every decision at ``step`` (stateless in ``(seed, step)``)."""
        out = []
        logits = self.logits()
        n = len(logits)
        for d, logit in enumerate(logits):
            seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64) * n + d])
            u = tf.random.stateless_uniform(logit.shape, seed=seed, dtype=logit.dtype)
            out.append(gumbel_softmax(logit, tau, u)[0])
        return out

    def expected_latency(self):
        return self.expected([ops.softmax(a) for a in self.logits()])

    def _train_step(self, images, labels, tau, step):
        with tf.GradientTape() as tape:
            logits = self.supernet(images, self.samples(tau, step), training=True)
            task = self.loss_fn(labels, logits)
            expected = self.expected_latency()
            cost = cost_loss(expected, self.budget_ms)
            loss = task + self.cost_weight * cost
        grads = tape.gradient(loss, self.weight_vars + self.arch_vars)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self.weight_vars + self.arch_vars)]
        n = len(self.weight_vars)
        self.w_opt.apply(grads[:n], self.weight_vars)
        self.a_opt.apply(grads[n:], self.arch_vars)
        return {"loss": loss, "task": task, "cost": cost, "expected_ms": expected}

    def run(self, data: Callable, steps: int, checkpoint=None, every: int = 50, on_step: Callable | None = None) -> int:
        """Search until ``steps`` (resuming from ``checkpoint`` when it exists); returns the step."""
        if every < 1:
            raise NASError(f"checkpoint every must be >= 1 step, got {every!r}")
        if checkpoint is not None and os.path.exists(checkpoint):
            self.restore(checkpoint)
        while self.step < steps:
            images, labels = data(self.step)
            tau = tf.constant(self.schedule(self.step), tf.float32)
            out = self._step_fn(images, labels, tau, tf.constant(self.step, tf.int64))
            self.last = {k: float(v) for k, v in out.items()}
            self.step += 1
            if on_step is not None:
                on_step(self.step, self.last)
            if checkpoint is not None and (self.step % every == 0 or self.step == steps):
                self.save(checkpoint)
        return self.step

    def alphas(self) -> list[np.ndarray]:
        """Per-decision logits now (the alphas themselves unless the space maps them)."""
        return [np.asarray(a) for a in self.logits()]

    def derive(self):
        """The discrete architecture (a family config) of the current alphas."""
        return self.space.derive(self.alphas())

    # -- checkpoint ------------------------------------------------------------------------------
    def _groups(self):
        return {"model": self.supernet.variables, "w_opt": self.w_opt.variables, "a_opt": self.a_opt.variables}

    def save(self, path) -> None:
        arrays = {f"{g}/{i}": np.asarray(v) for g, vs in self._groups().items() for i, v in enumerate(vs)}
        meta = {"format": CHECKPOINT_FORMAT, "space": self.space.name, "step": self.step, "seed": self.seed,
                "counts": {g: len(vs) for g, vs in self._groups().items()}}
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        atomic_write_bytes(path, buf.getvalue())

    def restore(self, path) -> int:
        with np.load(path) as data:
            meta = json.loads(str(data["__meta__"]))
            if meta.get("format") != CHECKPOINT_FORMAT or meta.get("space") != self.space.name:
                raise NASError(f"{path}: not a {self.space.name!r} search checkpoint (format {CHECKPOINT_FORMAT})")
            if meta.get("seed") != self.seed:  # before any variable is overwritten
                raise NASError(f"{path}: saved with seed {meta.get('seed')!r}, this search has seed {self.seed!r}")
            for group, variables in self._groups().items():
                if meta["counts"][group] != len(variables):
                    raise NASError(f"{path}: {group} has {meta['counts'][group]} variables, this search "
                                   f"{len(variables)}: another space or supernet")
                for i, v in enumerate(variables):
                    value = data[f"{group}/{i}"]
                    if tuple(value.shape) != tuple(v.shape):
                        raise NASError(f"{path}: {group}/{i} ({v.path}) has shape {value.shape}, expected {v.shape}")
                    v.assign(value)
        self.step = int(meta["step"])
        return self.step
