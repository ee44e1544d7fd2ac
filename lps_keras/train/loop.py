"""``train(recipe)``: ``model.fit`` on the recipe's data with the paper's schedule, resumable and observable.

The run directory, schedule, backup/resume, dtype policy and cleanup are a
:class:`~lps_keras.train.run.TrainingRun` (shared with ``pretrain``; its docstring explains the
schedule and what a SIGKILL loses). Everything a run depends on comes from the recipe
(``train.run_dir``, ``train.init``, ``train.iterations``, ...); the CLI's flags are ``--set``
overrides of those fields. The model comes from the recipe's family (``model.family``), so every
family trains the same way. BN is synchronised across replicas whenever there is more than one (or
``model.sync_batchnorm`` asks for it); see :mod:`lps_keras.train.distribute` and
:mod:`lps_keras.train.optim`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

import lps_keras.families.layers  # noqa: F401 - registers the other families' shared layers
import lps_keras.layers  # noqa: F401 - registers the layers, so importing this module is enough to load checkpoints
import lps_keras.losses  # noqa: F401 - the training checkpoints' compile config names the loss
import lps_keras.model  # noqa: F401 - registers LPSNet, the class a checkpoint is rebuilt as
from lps_keras import compat
from lps_keras.fileio import atomic_save_model, atomic_write_json
from lps_keras.recipe import Recipe
from lps_keras.train.callbacks import StepTracker, Validator, write_state
from lps_keras.train.distribute import has_gpu
from lps_keras.train.errors import TrainingError
from lps_keras.train.memory import check_training_memory
from lps_keras.train.optim import TorchSGD, training_schedule
from lps_keras.train.run import TrainingRun, resolve_run_dir  # noqa: F401 - resolve_run_dir: public here too


def make_evaluate_fn(val_ds, num_classes: int, progress: bool):
    import tensorflow as tf

    from lps_keras.metrics import evaluate_predictions

    def evaluate_fn(model):
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return evaluate_predictions(predict, val_ds, num_classes, ignore_index=255, progress=progress)

    return evaluate_fn


def train(
    recipe: Recipe,
    resume: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose="auto",
    jit_compile="auto",
) -> dict:
    """Train the recipe's model; returns a summary (also written to ``<run_dir>/metrics.json``).

    Args:
        recipe: a validated :class:`~lps_keras.recipe.Recipe` of any model family; the run directory
            is ``train.run_dir`` (``{name}`` filled in), the starting weights ``train.init`` (a
            ``.keras`` checkpoint or published weights; ignored when resuming from a backup).
        resume: continue from ``<run_dir>/backup`` if it exists; ``False`` discards it.
        callbacks: extra Keras callbacks for ``fit``.
        verbose: Keras progress output (``"auto"``: progress bar on a terminal, one line per
            epoch otherwise).
        jit_compile: passed to ``model.compile``; ``"auto"`` is Keras' choice (XLA) on GPU and off on CPU.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint stays in place).
        TrainingError: bad setup (run directory, --init, distribution).
    """
    import tensorflow as tf

    from lps_keras import families
    from lps_keras.class_balance import class_weights, format_weights
    from lps_keras.data import build_dataset, check_split, class_names
    from lps_keras.losses import build_loss
    from lps_keras.viz import get_palette
    from lps_keras.weights import WeightsError, init_weights

    if recipe.data.dataset == "imagenet":
        raise TrainingError(f"{recipe.name}: data.dataset 'imagenet' is for classification pretraining; "
                            "run it with pretrain.py, then start segmentation from it with train.init")
    recipe.check_classes_cover_dataset()
    cfg = recipe.train
    config = recipe.model_config()
    family = recipe.family()
    run = TrainingRun(recipe, resume=resume, verbose=verbose, jit_compile=jit_compile)
    if not has_gpu():
        # Refused before the run directory exists: past the memory, TF aborts (std::bad_alloc). After the
        # strategy: the estimate builds NDNet/MRMS models, which starts TensorFlow, and a multi-worker
        # strategy must be created before that.
        check_training_memory(config, cfg.batch_size, recipe.data.augment.crop_size, config.num_classes,
                              "train.batch_size / data.augment.crop_size")
    with run:
        num_classes = config.num_classes
        sync_bn = recipe.model.sync_batchnorm or run.strategy.num_replicas_in_sync > 1
        schedule = training_schedule(cfg, run.total)
        weights = class_weights(recipe)
        if weights is not None:
            print(f"class balance ({cfg.class_balance}): "
                  f"{format_weights(weights, class_names(recipe.data.dataset, num_classes))}", flush=True)
        prefix = "lpsnet" if family.name == "lps" else family.name
        with run.strategy.scope():
            extra = {"sync_batchnorm": True} if sync_bn else {}
            model = family.build(config, name=f"{prefix}_{recipe.name}", **extra)
            optimizer = TorchSGD(learning_rate=schedule, momentum=cfg.momentum, l2=cfg.weight_decay)
            model.compile(optimizer=optimizer, loss=build_loss(cfg, weights), jit_compile=run.jit_compile)
            model.optimizer.build(model.trainable_variables)
        if isinstance(run.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            run.stack.enter_context(compat.multi_worker_fit(model, run.strategy, recipe.data.augment.crop_size))

        def init(m):
            try:
                init_weights(m, cfg.init)
            except WeightsError as e:
                raise TrainingError(f"--init: {e}") from None

        start_step = run.resume_or_start(model, config, init=init if cfg.init else None)
        run.write_run_files(sync_batchnorm=sync_bn, family=family.name)

        # A resumed run continues the same (example, augmentation seed) stream where the backup
        # left it, so it trains on exactly the batches the uninterrupted run would have seen.
        train_ds = build_dataset(recipe, recipe.data.train_split, training=True, batch_size=cfg.batch_size,
                                 skip_examples=start_step * cfg.batch_size)
        val_ds = build_dataset(recipe, recipe.data.val_split, training=False, batch_size=recipe.eval.batch_size)
        if start_step < run.total:
            # A bad validation file would otherwise surface only at the first validation, hours in;
            # a bad training file only when the shuffled stream reaches it, and tf.data's unordered
            # (deterministic=False) parallel decoding lets later examples overtake one whose decode
            # failed, so a short run could end without ever reporting it.
            for split, training in ((recipe.data.train_split, True), (recipe.data.val_split, False)):
                t_check = time.time()
                n_checked = check_split(recipe, split, training=training)
                if n_checked:
                    print(f"checked the {n_checked} {split} files ({time.time() - t_check:.1f} s)", flush=True)
        image_batch = next(iter(val_ds.take(1))) if cfg.image_summaries > 0 else None

        train_writer, val_writer = run.make_writers()
        evaluate_fn = make_evaluate_fn(val_ds, num_classes, progress=run.verbose == 1)
        tracker = StepTracker(run.state, schedule, cfg.log_interval, train_writer, run.log_path)
        validator = Validator(run.state, cfg.val_interval, evaluate_fn, run.files_dir, val_writer, image_batch,
                              get_palette(recipe.data.dataset, num_classes), cfg.image_summaries)
        final_step = run.fit(model, train_ds, [tracker, *callbacks, validator, run.backup], f"training {model.name}")

        state = run.state
        if state.last_val is None or state.last_val["step"] != final_step:
            result = evaluate_fn(model)
            state.history.append({"step": final_step, "miou": float(result.miou)})
        else:
            result = state.last_val["result"]
        if run.files_dir is not None and not (run.files_dir / "last.keras").exists():
            atomic_save_model(model, run.files_dir / "last.keras")

        # Fused deploy model, checked against the training model in inference mode.
        deploy = families.fuse(model)
        x = image_batch[0] if image_batch is not None else next(iter(val_ds.take(1)))[0]
        ref = np.asarray(ops.convert_to_numpy(model(x, training=False)), np.float64)
        out = np.asarray(ops.convert_to_numpy(deploy(x, training=False)), np.float64)
        parity = float(np.max(np.abs(ref - out)) / max(np.max(np.abs(ref)), 1e-12))
        print(f"deploy model parity: max relative error {parity:.2e} (training model in inference mode vs fused)",
              flush=True)

        names = class_names(recipe.data.dataset, num_classes)
        summary = {
            "recipe": recipe.name,
            "family": family.name,
            "run_dir": str(run.out_dir),
            "iterations": run.total,
            "final_step": final_step,
            "resumed_from_step": start_step,
            "miou": float(result.miou),
            "pixel_accuracy": float(result.pixel_accuracy),
            "mean_class_accuracy": float(result.mean_class_accuracy),
            "best_miou": state.best_miou if state.best_step is not None else None,
            "best_step": state.best_step,
            "history": state.history,
            "deploy_parity_max_rel_error": parity,
            **run.timing(final_step),
            "per_class": result.to_dict(names)["per_class"],
        }
        if run.files_dir is not None:
            atomic_save_model(deploy, run.files_dir / "deploy.keras", include_optimizer=False)
            write_state(run.files_dir, state, final_step)
            atomic_write_json(run.files_dir / "metrics.json", summary)
            print(result.table(names), flush=True)
        return summary

