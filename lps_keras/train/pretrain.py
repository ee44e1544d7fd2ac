"""``pretrain(recipe)``: ImageNet classification pretraining of the LPS-Net paths, resumable like ``train``.

The model is :class:`~lps_keras.classifier.LPSClassifier` of the recipe's architecture (the class
count comes from the data: the class folders, or TFDS' 1000 labels). The schedule is the one of
:func:`lps_keras.train.train`: ``train.iterations`` steps of :class:`TorchSGD` (momentum, coupled
weight decay ``train.weight_decay``) with ``pretrain.schedule`` (:class:`CosineLR` or
:class:`PolyLR`, linear warmup ``train.warmup_iterations``), in Keras epochs of
``gcd(val_interval, checkpoint_interval)`` steps, with the same callbacks: loss/lr logging and
non-finite-loss stop (:class:`StepTracker`), atomic backups, ``last.keras`` and ``state.json``
(:class:`Backup`; rerunning resumes from the last backup with the same optimizer state and input
position).

The run directory (``train.run_dir``) gets ``recipe.json``, ``environment.json``,
``train_log.jsonl``, ``tensorboard/``, ``backup/``, ``last.keras`` / ``best.keras`` (the classifier,
best by val top-1), ``metrics.json`` and, at the end, ``backbone.keras``: the backbone alone
(:meth:`LPSClassifier.backbone`), what ``train.py --init`` (``train.init``) takes. Every file is
written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import ops

import lps_keras.classifier  # noqa: F401 - registers LPSClassifier, the class a checkpoint is rebuilt as
import lps_keras.layers  # noqa: F401 - registers the layers
from lps_keras.fileio import atomic_save_model, atomic_write_json
from lps_keras.recipe import Recipe
from lps_keras.train.callbacks import RunState, StepTracker, write_state
from lps_keras.train.distribute import has_gpu
from lps_keras.train.errors import TrainingError
from lps_keras.train.memory import check_training_memory
from lps_keras.train.optim import CosineLR, PolyLR, TorchSGD
from lps_keras.train.run import TrainingRun
from lps_keras.train.summaries import summary_scalar

#: The file in the run directory that ``train.init`` of a segmentation recipe points at.
BACKBONE_FILE = "backbone.keras"

__all__ = ["BACKBONE_FILE", "ClassifierValidator", "best_record", "make_classification_eval", "pretrain"]


def make_classification_eval(val_ds):
    """``evaluate(model) -> {"top1", "top5", "num_images"}`` over one pass of ``val_ds``."""
    import tensorflow as tf

    traced = {}  # one tf.function per model, not one per validation (retracing)

    def evaluate(model):
        if id(model) not in traced:
            traced.clear()
            traced[id(model)] = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        predict = traced[id(model)]
        n = top1 = top5 = 0
        for images, labels in val_ds:
            logits = np.asarray(ops.convert_to_numpy(predict(images)), np.float32)
            labels = np.asarray(labels)
            ranked = np.argsort(-logits, axis=1)[:, :5]
            top1 += int(np.sum(ranked[:, 0] == labels))
            top5 += int(np.sum(np.any(ranked == labels[:, None], axis=1)))
            n += len(labels)
        if n == 0:
            raise TrainingError("the validation split has no images")
        return {"top1": top1 / n, "top5": top5 / n, "num_images": n}

    return evaluate


class ClassifierValidator(keras.callbacks.Callback):
    """Val top-1 / top-5 every ``val_interval`` steps and at the end; ``best.keras`` by top-1."""

    def __init__(self, state: RunState, val_interval: int, evaluate_fn, run_dir: Path, writer):
        super().__init__()
        self.state = state
        self.val_interval = val_interval
        self.evaluate_fn = evaluate_fn
        self.run_dir = run_dir
        self.writer = writer

    def on_epoch_end(self, epoch, logs=None):
        if self.state.nan_step is not None:
            return
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.val_interval and step < self.state.total_steps:
            return
        t0 = time.time()
        result = self.evaluate_fn(self.model)
        record = {"step": step, "top1": result["top1"], "top5": result["top5"],
                  "eval_seconds": round(time.time() - t0, 2)}
        self.state.history.append(record)
        self.state.last_val = {"step": step, "result": result}
        print(f"\nstep {step}: val top-1 {100 * result['top1']:.2f}  top-5 {100 * result['top5']:.2f}", flush=True)
        if self.writer is not None:
            with self.writer.as_default():
                summary_scalar("top1", result["top1"], step)
                summary_scalar("top5", result["top5"], step)
            self.writer.flush()
        if best_record(self.state.history) is record:
            atomic_save_model(self.model, self.run_dir / "best.keras")


def best_record(history: list) -> dict | None:
    """The validation record with the highest top-1 (the earliest of equals)."""
    records = [h for h in history if h.get("top1") is not None]
    return max(records, key=lambda h: (h["top1"], -h["step"])) if records else None


def pretrain(recipe: Recipe, resume: bool = True, callbacks: Sequence[keras.callbacks.Callback] = (),
             verbose="auto", jit_compile="auto") -> dict:
    """Pretrain the recipe's backbone as a classifier; returns a summary (also ``<run_dir>/metrics.json``).

    Arguments as for :func:`lps_keras.train.train`. Raises TrainingError for a recipe that is not
    a classification recipe, a class count that disagrees with the data, or a backup of another
    architecture; DataError for a missing split folder or an empty class folder.
    """
    from lps_keras.classifier import LPSClassifier
    from lps_keras.data.imagenet import build_classification_dataset

    cfg = recipe.train
    if recipe.data.dataset != "imagenet":
        raise TrainingError(f"data.dataset: pretrain.py trains a classifier on 'imagenet' (class folders or TFDS "
                            f"imagenet2012), got {recipe.data.dataset!r}; segmentation recipes are for train.py")
    if recipe.model.family != "lps":
        raise TrainingError(f"model.family: pretrain.py pretrains LPS-Net's paths; got {recipe.model.family!r}")
    if cfg.init:
        raise TrainingError(f"train.init: pretraining starts from random weights, got {cfg.init!r}")
    if cfg.distribute == "multi_worker":
        raise TrainingError("train.distribute: 'multi_worker' is not supported by pretrain.py; use 'mirrored'")
    run = TrainingRun(recipe, resume=resume, verbose=verbose, jit_compile=jit_compile)
    with run:
        run_dir, state, total = run.work_dir, run.state, run.total
        val_ds, names = build_classification_dataset(recipe, recipe.data.val_split, training=False)
        n = recipe.model.num_classes or len(names)
        if n != len(names):
            raise TrainingError(f"model.num_classes: {n}, but the data has {len(names)} classes")
        arch = recipe.arch(num_classes=n)
        if not has_gpu():  # before the first step: past the memory, TF aborts (std::bad_alloc)
            check_training_memory(arch, cfg.batch_size, recipe.pretrain.image_size, 0,
                                  "train.batch_size / pretrain.image_size")
        schedule = (CosineLR(cfg.base_lr, total, cfg.warmup_iterations) if recipe.pretrain.schedule == "cosine"
                    else PolyLR(cfg.base_lr, total, cfg.poly_power, cfg.warmup_iterations))
        sync_bn = recipe.model.sync_batchnorm or run.strategy.num_replicas_in_sync > 1
        with run.strategy.scope():
            model = LPSClassifier(arch, sync_batchnorm=sync_bn, name=f"lps_classifier_{recipe.name}")
            optimizer = TorchSGD(learning_rate=schedule, momentum=cfg.momentum, l2=cfg.weight_decay)
            model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                          jit_compile=run.jit_compile)
            model.optimizer.build(model.trainable_variables)

        start_step = run.resume_or_start(model, arch, clear_files=("best.keras", BACKBONE_FILE), task="pretrain")
        train_ds, train_names = build_classification_dataset(recipe, recipe.data.train_split, training=True,
                                                             skip_examples=start_step * cfg.batch_size)
        if train_names != names:
            raise TrainingError(f"data.root: the {recipe.data.train_split!r} and {recipe.data.val_split!r} splits "
                                f"have different class folders ({len(train_names)} vs {len(names)} classes)")
        run.write_run_files(task="pretrain", num_classes=n, class_names=list(names))

        train_writer, val_writer = run.make_writers()
        evaluate_fn = make_classification_eval(val_ds)
        tracker = StepTracker(state, schedule, cfg.log_interval, train_writer, run.log_path)
        validator = ClassifierValidator(state, cfg.val_interval, evaluate_fn, run_dir, val_writer)
        final_step = run.fit(model, train_ds, [tracker, *callbacks, validator, run.backup],
                             f"pretraining {model.name} ({n} classes, {recipe.pretrain.schedule} lr "
                             f"{cfg.base_lr:g})")

        if state.last_val is not None and state.last_val["step"] == final_step:
            result = state.last_val["result"]
        else:
            # A rerun of a finished run evaluates again, as train() does: the evaluation's settings
            # (data.val_subset, pretrain.eval_resize, ...) may have changed since the stored figure.
            result = evaluate_fn(model)
            if state.history and state.history[-1].get("step") == final_step:
                state.history.pop()
            state.history.append({"step": final_step, "top1": result["top1"], "top5": result["top5"]})
        if not (run_dir / "last.keras").exists():
            atomic_save_model(model, run_dir / "last.keras")
        atomic_save_model(model.backbone(), run_dir / BACKBONE_FILE, include_optimizer=False)
        best = best_record(state.history)
        summary = {
            "recipe": recipe.name, "task": "pretrain", "run_dir": str(run_dir), "num_classes": n,
            "iterations": total, "final_step": final_step, "resumed_from_step": start_step,
            "top1": float(result["top1"]), "top5": float(result["top5"]),
            "best_top1": best["top1"] if best else None, "best_step": best["step"] if best else None,
            "history": state.history, "backbone": str(run_dir / BACKBONE_FILE), **run.timing(final_step),
        }
        write_state(run_dir, state, final_step)
        atomic_write_json(run_dir / "metrics.json", summary)
        return summary
