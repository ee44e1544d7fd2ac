"""``train(recipe)``: ``model.fit`` on the recipe's data with the paper's schedule, resumable and observable.

Schedule. Training is iteration-based: ``train.iterations`` optimizer steps in Keras "epochs" of
``gcd(val_interval, checkpoint_interval)`` steps, so validation and backups fall on epoch ends.
Keras' ``BackupAndRestore`` restores only at epoch boundaries (the batch index it records is not
used on restore), which is why backups are taken at epoch ends only; a SIGKILL then loses at most
``checkpoint_interval`` steps, and the rerun continues at the backed-up optimizer step with the
same optimizer state (momentum buffers, iteration counter, hence the same learning-rate step)
and the same position in the input stream (the data pipeline skips the examples already consumed,
at the index level, without decoding them).

Everything a run depends on comes from the recipe (``train.run_dir``, ``train.init``,
``train.iterations``, ...); the CLI's flags are ``--set`` overrides of those fields. BN is
synchronised across replicas whenever there is more than one (or ``model.sync_batchnorm`` asks
for it); see :mod:`lps_keras.train.distribute` and :mod:`lps_keras.train.optim`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import ops

import lps_keras.layers  # noqa: F401 - registers the layers, so importing this module is enough to load checkpoints
import lps_keras.losses  # noqa: F401 - the training checkpoints' compile config names the loss
import lps_keras.model  # noqa: F401 - registers LPSNet, the class a checkpoint is rebuilt as
from lps_keras import compat, fileio
from lps_keras.errors import check_path_name
from lps_keras.fileio import DirectoryLock, atomic_save_model, atomic_write_json, atomic_write_text
from lps_keras.recipe import Recipe
from lps_keras.train.callbacks import Backup, RunState, StepTracker, Validator, restore_state, truncate_log, write_state
from lps_keras.train.distribute import environment_info, has_gpu, make_strategy, resolve_mixed_precision, worker_info
from lps_keras.train.errors import NonFiniteLossError, TrainingError
from lps_keras.train.memory import check_training_memory
from lps_keras.train.optim import PolyLR, TorchSGD


def resolve_run_dir(recipe: Recipe) -> Path:
    """``train.run_dir`` with ``{name}`` filled in (the name must be a plain file name)."""
    template = recipe.train.run_dir
    if "{name}" in str(template):
        # recipe.name becomes a directory name: "../x" or "a/b" would put the run somewhere else.
        check_path_name("recipe.name", recipe.name)
    try:
        return Path(str(template).format(name=recipe.name))
    except (KeyError, IndexError, ValueError) as e:
        raise TrainingError(f"train.run_dir: bad template {template!r} ({e}); only {{name}} is substituted") from None


def make_evaluate_fn(val_ds, num_classes: int, progress: bool):
    import tensorflow as tf

    from lps_keras.metrics import evaluate_predictions

    def evaluate_fn(model):
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return evaluate_predictions(predict, val_ds, num_classes, ignore_index=255, progress=progress)

    return evaluate_fn


def run_settings(verbose, jit_compile) -> tuple:
    """``verbose`` and ``jit_compile`` with ``"auto"`` resolved (what ``train`` and ``pretrain`` pass to Keras)."""
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if jit_compile == "auto" and not has_gpu():
        # XLA on CPU makes the train step of these small convnets ~6x slower (measured, TF 2.21).
        jit_compile = False
    return verbose, jit_compile


def open_run_dir(work_dir: Path) -> tuple[bool, DirectoryLock]:
    """Create ``work_dir``, lock it for this process and remove what killed writers left in it.

    Returns (whether this call created it, the held lock). The lock is taken before any backup
    is read: a second process on the same directory would otherwise resume from the first's live
    backup and both would write the same files. The caller releases it at the end of the run, and a
    run that fails before its first backup removes a directory it created while still holding it.
    """
    created = not work_dir.exists()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"run directory {work_dir}: cannot create it ({e})") from None
    lock = DirectoryLock(work_dir, "run directory").acquire()  # BusyError naming the holder's pid
    # Temporary files of a run that was killed while writing a checkpoint.
    for d in (work_dir, work_dir / "backup"):
        fileio.remove_stale_temps(d)
    return created, lock


def remove_unfinished_run_dir(work_dir: Path, created: bool, backup) -> None:
    """After a failure: remove ``work_dir`` if this run created it and left no backup to resume from.

    Called while the run still holds the directory's lock; the lock file goes with the directory
    (the held descriptor keeps no path alive), so "nothing left behind" stays true.
    """
    if created and (backup is None or not backup.exists()):
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)


def epoch_steps_of(recipe: Recipe) -> int:
    t = recipe.train
    return max(1, min(math.gcd(t.val_interval, t.checkpoint_interval), t.iterations))


def train(
    recipe: Recipe,
    resume: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose="auto",
    jit_compile="auto",
) -> dict:
    """Train the recipe's model; returns a summary (also written to ``<run_dir>/metrics.json``).

    Args:
        recipe: a validated :class:`~lps_keras.recipe.Recipe`; the run directory is
            ``train.run_dir`` (``{name}`` filled in), the starting weights ``train.init`` (a
            ``.keras`` checkpoint or official weights; ignored when resuming from a backup).
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

    from lps_keras.class_balance import class_weights, format_weights
    from lps_keras.data import build_dataset, check_split, class_names, unwrap_data_error
    from lps_keras.losses import build_loss
    from lps_keras.model import build_model
    from lps_keras.reparam import reparameterize
    from lps_keras.viz import get_palette
    from lps_keras.weights import WeightsError, init_weights

    t_start = time.time()
    if recipe.data.dataset == "imagenet":
        raise TrainingError(f"{recipe.name}: data.dataset 'imagenet' is for classification pretraining; "
                            "run it with pretrain.py, then start segmentation from it with train.init")
    recipe.check_classes_cover_dataset()
    cfg = recipe.train
    if not has_gpu():
        # Refused here, before anything is created: past the memory, TF aborts (std::bad_alloc).
        arch = recipe.arch()
        check_training_memory(arch, cfg.batch_size, recipe.data.augment.crop_size, arch.num_classes,
                              "train.batch_size / data.augment.crop_size")
    verbose, jit_compile = run_settings(verbose, jit_compile)
    total = cfg.iterations
    epoch_steps = epoch_steps_of(recipe)
    epochs = math.ceil(total / epoch_steps)
    strategy = make_strategy(cfg.distribute)
    is_chief, task_id = worker_info(strategy)
    out_dir = resolve_run_dir(recipe)
    work_dir = out_dir if is_chief else out_dir / "workers" / str(task_id)
    policy = resolve_mixed_precision(cfg.mixed_precision)
    created_dir, run_lock = open_run_dir(work_dir)
    files_dir = work_dir if is_chief else None
    log_path = work_dir / "train_log.jsonl"

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    writers = []
    backup = None
    stack = contextlib.ExitStack()
    try:
        keras.utils.set_random_seed(cfg.seed)
        arch = recipe.arch()
        num_classes = arch.num_classes
        sync_bn = recipe.model.sync_batchnorm or strategy.num_replicas_in_sync > 1
        schedule = PolyLR(cfg.base_lr, total, cfg.poly_power, cfg.warmup_iterations)
        weights = class_weights(recipe)
        if weights is not None:
            print(f"class balance ({cfg.class_balance}): "
                  f"{format_weights(weights, class_names(recipe.data.dataset, num_classes))}", flush=True)
        with strategy.scope():
            model = build_model(arch, sync_batchnorm=sync_bn, name=f"lpsnet_{recipe.name}")
            optimizer = TorchSGD(learning_rate=schedule, momentum=cfg.momentum, l2=cfg.weight_decay)
            model.compile(optimizer=optimizer, loss=build_loss(cfg, weights), jit_compile=jit_compile)
            model.optimizer.build(model.trainable_variables)
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            stack.enter_context(compat.multi_worker_fit(model, strategy, recipe.data.augment.crop_size))

        state = RunState(total_steps=total, epoch_steps=epoch_steps)
        backup = Backup(work_dir / "backup", state, files_dir, cfg.checkpoint_interval)
        backup.set_model(model)
        start_step = 0
        if backup.exists() and not resume:
            import shutil

            shutil.rmtree(work_dir / "backup")
            for name in ("train_log.jsonl", "state.json"):
                if (work_dir / name).exists():
                    os.unlink(work_dir / name)
        arch_file = work_dir / "backup" / "arch.json"
        if backup.exists():
            check_backup_arch(arch_file, arch, work_dir)
            try:
                start_step = backup.restore()
            except ValueError as e:
                raise TrainingError(
                    f"run directory {work_dir} holds a backup that does not fit the recipe's architecture {arch} "
                    f"({str(e).splitlines()[0]}); use --no-resume or another --run-dir") from None
            print(f"resuming from {backup.weights_path} at step {start_step}/{total}", flush=True)
            restore_state(work_dir / "state.json", state, start_step)
            truncate_log(log_path, start_step)
        else:
            if log_path.exists():
                os.unlink(log_path)
            if cfg.init:
                try:
                    init_weights(model, cfg.init)
                except WeightsError as e:
                    raise TrainingError(f"--init: {e}") from None
            atomic_write_json(arch_file, arch.to_dict())  # what a resumed run must match
        state.step = start_step
        state.last_good_step = start_step if start_step > 0 else None

        if files_dir is not None:
            atomic_write_text(files_dir / "recipe.json", recipe.to_json() + "\n")
            env = environment_info(strategy, policy)
            env.update({"epoch_steps": epoch_steps, "epochs": epochs, "resumed_from_step": start_step,
                        "sync_batchnorm": sync_bn})
            atomic_write_json(files_dir / "environment.json", env)

        # A resumed run continues the same (example, augmentation seed) stream where the backup
        # left it, so it trains on exactly the batches the uninterrupted run would have seen.
        train_ds = build_dataset(recipe, recipe.data.train_split, training=True, batch_size=cfg.batch_size,
                                 skip_examples=start_step * cfg.batch_size)
        val_ds = build_dataset(recipe, recipe.data.val_split, training=False, batch_size=recipe.eval.batch_size)
        if start_step < total:
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

        tb_dir = work_dir / "tensorboard"
        train_writer = tf.summary.create_file_writer(str(tb_dir / "train")) if is_chief else None
        val_writer = tf.summary.create_file_writer(str(tb_dir / "val")) if is_chief else None
        writers = [w for w in (train_writer, val_writer) if w is not None]
        evaluate_fn = make_evaluate_fn(val_ds, num_classes, progress=verbose == 1)
        tracker = StepTracker(state, schedule, cfg.log_interval, train_writer, log_path)
        validator = Validator(state, cfg.val_interval, evaluate_fn, files_dir, val_writer, image_batch,
                               get_palette(recipe.data.dataset, num_classes), cfg.image_summaries)
        all_callbacks = [tracker, *callbacks, validator, backup]

        fit_seconds = 0.0
        if start_step < total:
            print(f"training {model.name}: {total} iterations in {epochs} epochs of {epoch_steps} steps, "
                  f"batch {cfg.batch_size}, {strategy.num_replicas_in_sync} replica(s), policy {policy}; "
                  f"run dir {work_dir}", flush=True)
            t_fit = time.time()
            model.fit(train_ds, epochs=epochs, steps_per_epoch=epoch_steps, initial_epoch=start_step // epoch_steps,
                      callbacks=all_callbacks, verbose=verbose, shuffle=False)
            fit_seconds = time.time() - t_fit
        for w in writers:
            w.flush()
        if state.nan_step is not None:
            raise NonFiniteLossError(state.nan_message)

        final_step = int(ops.convert_to_numpy(model.optimizer.iterations))
        if state.last_val is None or state.last_val["step"] != final_step:
            result = evaluate_fn(model)
            state.history.append({"step": final_step, "miou": float(result.miou)})
        else:
            result = state.last_val["result"]
        if files_dir is not None and not (files_dir / "last.keras").exists():
            atomic_save_model(model, files_dir / "last.keras")

        # Fused deploy model, checked against the training model in inference mode.
        deploy = reparameterize(model)
        x = image_batch[0] if image_batch is not None else next(iter(val_ds.take(1)))[0]
        ref = np.asarray(ops.convert_to_numpy(model(x, training=False)), np.float64)
        out = np.asarray(ops.convert_to_numpy(deploy(x, training=False)), np.float64)
        parity = float(np.max(np.abs(ref - out)) / max(np.max(np.abs(ref)), 1e-12))
        print(f"deploy model parity: max relative error {parity:.2e} (training model in inference mode vs fused)",
              flush=True)

        names = class_names(recipe.data.dataset, num_classes)
        summary = {
            "recipe": recipe.name,
            "run_dir": str(out_dir),
            "iterations": total,
            "final_step": final_step,
            "resumed_from_step": start_step,
            "miou": float(result.miou),
            "pixel_accuracy": float(result.pixel_accuracy),
            "mean_class_accuracy": float(result.mean_class_accuracy),
            "best_miou": state.best_miou if state.best_step is not None else None,
            "best_step": state.best_step,
            "history": state.history,
            "deploy_parity_max_rel_error": parity,
            "fit_seconds": round(fit_seconds, 2),
            "wall_seconds": round(time.time() - t_start, 2),
            "images_per_second": (round((final_step - start_step) * cfg.batch_size / fit_seconds, 3)
                                  if fit_seconds > 0 else None),
            "per_class": result.to_dict(names)["per_class"],
        }
        if files_dir is not None:
            atomic_save_model(deploy, files_dir / "deploy.keras", include_optimizer=False)
            write_state(files_dir, state, final_step)
            atomic_write_json(files_dir / "metrics.json", summary)
            print(result.table(names), flush=True)
        return summary
    except BaseException as e:
        remove_unfinished_run_dir(work_dir, created_dir, backup)  # nothing to resume from: no half-made directory
        data_error = unwrap_data_error(e) if isinstance(e, Exception) else None
        if data_error is not None and data_error is not e:
            # tf.data wraps it in an InvalidArgumentError carrying a 45-line traceback.
            raise data_error from None
        raise
    finally:
        stack.close()
        for w in writers:
            w.close()
        keras.config.set_dtype_policy(previous_policy)
        run_lock.release()


def check_backup_arch(arch_file: Path, arch, work_dir: Path) -> None:
    """Raise TrainingError when the backup beside ``arch_file`` was written for another architecture."""
    from lps_keras.arch import Arch

    try:
        saved = Arch.from_dict(json.loads(arch_file.read_text()))
    except (OSError, ValueError):
        return  # a backup written before arch.json existed: the restore itself checks shapes
    if saved != arch:
        raise TrainingError(
            f"run directory {work_dir} holds a backup of architecture {saved} ({saved.num_classes} classes); the "
            f"recipe asks for {arch} ({arch.num_classes} classes): {saved.differences(arch, ('backup', 'recipe'))}. "
            "Use --no-resume or another --run-dir")
