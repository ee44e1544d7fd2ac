"""Evaluation: full-resolution mIoU of a trained model on a recipe's split, optional prediction PNGs.

Accepted weights:

- a ``.keras`` model, training or deploy form (``train.py`` writes ``best.keras``, ``last.keras``,
  ``deploy.keras``);
- a ``.weights.h5`` file for the recipe's architecture (training form);
- official LPS-Net weights (``.pth`` / ``.npz``), loaded into a deploy model of the recipe's arch;
- an exported SavedModel directory (``export.py``): its ``serving_default`` signature takes uint8
  images and normalises inside, so the dataset's normalised images are mapped back to uint8
  (``round((x * std + mean) * 255)``, exact for images decoded from 8-bit files).

Logits are upsampled (bilinear, align_corners) to the label size before the argmax, so the score is
at the dataset's full label resolution whatever ``data.eval_size`` the images were resized to.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras.errors import LPSError
from lps_keras.recipe import Recipe

__all__ = ["EvaluationError", "evaluate", "load_for_eval"]


class EvaluationError(LPSError, ValueError):
    """Bad weights / split / output directory; the message names it."""


def _is_savedmodel(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def load_for_eval(recipe: Recipe, weights):
    """``(model_fn, description)``: ``model_fn(normalised float images) -> scores [B, h, w, C]``."""
    import tensorflow as tf

    path = Path(weights)
    if not path.exists():
        raise EvaluationError(f"--weights: {path} does not exist")
    if _is_savedmodel(path):
        from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
        from lps_keras.export.serving import load_savedmodel

        loaded = load_savedmodel(path, "--weights")  # a truncated variables file: one line naming the model
        if "serving_default" not in loaded.signatures:
            raise EvaluationError(f"--weights: SavedModel {path} has no serving_default signature")
        fn = loaded.signatures["serving_default"]
        inputs = fn.structured_input_signature[1]
        if "images" not in inputs or inputs["images"].dtype != tf.uint8:
            raise EvaluationError(
                f"--weights: SavedModel {path}: serving_default must take uint8 'images', got {inputs!r}"
            )
        static_hw = tuple(inputs["images"].shape[1:3])
        mean = tf.constant(IMAGENET_MEAN, tf.float32)
        std = tf.constant(IMAGENET_STD, tf.float32)

        def model_fn(images):
            x = tf.convert_to_tensor(images, tf.float32)
            u8 = tf.cast(tf.clip_by_value(tf.round((x * std + mean) * 255.0), 0, 255), tf.uint8)
            if None not in static_hw and tuple(u8.shape[1:3]) != static_hw:
                raise EvaluationError(
                    f"--weights: SavedModel {path} has a static input size {static_hw}, the images are "
                    f"{tuple(u8.shape[1:3])}; set data.eval_size to {list(static_hw)} or export with a dynamic size"
                )
            out = fn(images=u8)
            if "logits" in out:
                return out["logits"]
            if "probabilities" in out:
                # log keeps the argmax and interpolates like scores (outputs are already at input size).
                return tf.math.log(tf.maximum(tf.cast(out["probabilities"], tf.float32), 1e-30))
            raise EvaluationError(f"--weights: SavedModel {path} returns {sorted(out)}, no logits/probabilities")

        return model_fn, f"SavedModel {path}"

    import lps_keras.layers  # noqa: F401 - registers the custom layers for deserialisation
    import lps_keras.train  # noqa: F401 - registers TorchSGD / PolyLR (training checkpoints)

    name = path.name.lower()
    if name.endswith(".weights.h5"):
        from lps_keras.families import build

        model = build(recipe.model_config())
        try:
            model.load_weights(path)
        except Exception as e:  # noqa: BLE001
            raise EvaluationError(f"--weights: {path} does not fit the recipe's architecture: {e}") from None
        desc = f"weights {path}"
    elif name.endswith((".keras", ".pth", ".pt", ".npz")):
        from lps_keras.weights import prepare_deploy_model

        try:
            # The training form when the file has one, else the deploy form (official weights).
            model, _ = prepare_deploy_model(recipe.model_config(), path)
        except (ValueError, OSError, ImportError) as e:
            raise EvaluationError(f"--weights: {e}") from None
        desc = f"{'Keras model' if name.endswith('.keras') else 'official weights'} {path}"
    else:
        raise EvaluationError(
            f"--weights: {path}: expected a .keras model, .weights.h5, official .pth/.npz or a SavedModel directory"
        )
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return predict, desc


def _split_name(recipe: Recipe, split: str) -> str:
    if split == "val":
        return recipe.data.val_split
    if split == "train":
        return recipe.data.train_split
    return split


class _PredictionWriter:
    """Writes each prediction as official-format PNG, colour mask and overlay, numbered in dataset order."""

    def __init__(self, out_dir: Path, dataset: str, palette):
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        self.palette = palette
        self.index = 0
        try:
            for sub in ("labels", "color", "overlay"):
                (self.out_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EvaluationError(f"--save-predictions: cannot create {self.out_dir}: {e}") from None

    def __call__(self, images, labels, preds):
        from lps_keras import viz
        from lps_keras.data import denormalize

        preds = np.asarray(preds)
        images_u8 = denormalize(np.asarray(images))
        for img, pred in zip(images_u8, preds):
            stem = f"{self.index:05d}"
            if self.dataset in ("cityscapes", "synthetic"):
                # Official Cityscapes format: labelIds, what csEvalPixelLevelSemanticLabeling reads.
                viz.write_cityscapes_labelids(self.out_dir / "labels" / f"{stem}_labelIds.png", pred)
            else:
                viz.save_png(self.out_dir / "labels" / f"{stem}_trainIds.png", pred.astype(np.uint8))
            viz.save_png(self.out_dir / "color" / f"{stem}_color.png", viz.colorize(pred, self.palette))
            if img.shape[:2] == pred.shape:
                viz.save_png(self.out_dir / "overlay" / f"{stem}_overlay.png", viz.overlay(img, pred, self.palette))
            self.index += 1


def evaluate(
    recipe: Recipe,
    weights,
    split: str = "val",
    save_predictions=None,
    progress: bool = True,
    max_batches: Optional[int] = None,
) -> dict:
    """mIoU (per class too) of ``weights`` on the recipe's ``split``; prints the per-class table.

    ``save_predictions``: directory for ``labels/`` (Cityscapes labelIds PNGs for cityscapes and
    synthetic, trainId PNGs otherwise), ``color/`` and ``overlay/`` PNGs, named by position in
    the split (``00000``, ...), plus ``metrics.json``.
    """
    t0 = time.time()
    recipe.check_classes_cover_dataset()
    num_classes = recipe.model_config().num_classes
    model_fn, desc = load_for_eval(recipe, weights)

    from lps_keras.data import build_dataset, class_names
    from lps_keras.fileio import atomic_write_json
    from lps_keras.metrics import evaluate_predictions
    from lps_keras.viz import get_palette

    dataset = build_dataset(recipe, _split_name(recipe, split), training=False, batch_size=recipe.eval.batch_size)
    palette = get_palette(recipe.data.dataset, num_classes)
    writer = _PredictionWriter(Path(save_predictions), recipe.data.dataset, palette) if save_predictions else None

    checked = []

    def checked_fn(images):
        scores = model_fn(images)
        if not checked:
            c = int(scores.shape[-1])
            if c != num_classes:
                raise EvaluationError(
                    f"--weights: {desc} predicts {c} classes, the recipe's dataset {recipe.data.dataset!r} has "
                    f"{num_classes}"
                )
            checked.append(c)
        return scores

    print(f"evaluating {desc} on {recipe.data.dataset}/{_split_name(recipe, split)}", flush=True)
    result = evaluate_predictions(checked_fn, dataset, num_classes, ignore_index=255, progress=progress,
                                  steps=max_batches, on_batch=writer)
    names = class_names(recipe.data.dataset, num_classes)
    print(result.table(names), flush=True)
    summary = {
        "weights": str(weights),
        "model": desc,
        "dataset": recipe.data.dataset,
        "split": _split_name(recipe, split),
        "miou": float(result.miou) if math.isfinite(result.miou) else None,
        "pixel_accuracy": float(result.pixel_accuracy) if math.isfinite(result.pixel_accuracy) else None,
        "mean_class_accuracy": (float(result.mean_class_accuracy)
                                if math.isfinite(result.mean_class_accuracy) else None),
        "num_pixels": result.num_pixels,
        "seconds": round(time.time() - t0, 2),
        "per_class": result.to_dict(names)["per_class"],
    }
    if writer is not None:
        summary["num_predictions"] = writer.index
        atomic_write_json(Path(save_predictions) / "metrics.json", summary)
    return summary
