"""What an edge export costs: calibration images, and label agreement / mIoU against the fp32 SavedModel.

Images are real ones from the recipe's dataset: int8 calibration takes ``count`` (>= 100 by
default) images spread evenly over ``data.train_split``; the report runs the validation split
(``data.val_split``, all of it unless limited) through the fp32 network SavedModel the artefact
was converted from and through the artefact, and writes ``<artefact stem>_accuracy.json`` beside
it. Images are resized (bilinear) to the artefact's static input size; logits are upsampled
(align-corners bilinear, numpy) to the label size before the argmax, so agreement and mIoU are at
full label resolution like ``evaluate.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras import fileio
from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD, DataError
from lps_keras.errors import UsageError
from lps_keras.export.common import ExportError
from lps_keras.export.precision import resize_bilinear_np
from lps_keras.recipe import Recipe


def normalise(images_uint8: np.ndarray) -> np.ndarray:
    x = np.asarray(images_uint8, np.float32) / 255.0
    return (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)


def _resize(image: np.ndarray, size) -> np.ndarray:
    from PIL import Image

    h, w = (int(v) for v in size)
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def _files(recipe: Recipe, split: str):
    from lps_keras.data.pipeline import list_split

    return list_split(recipe, split)


def edge_input_size(recipe: Recipe) -> tuple[int, int]:
    """``export.input_size``, else ``data.eval_size``, else the size of the first validation (or training) image."""
    if recipe.export.input_size:
        return tuple(recipe.export.input_size)
    if recipe.data.eval_size:
        return tuple(recipe.data.eval_size)
    from PIL import Image

    for split in (recipe.data.val_split, recipe.data.train_split):
        try:
            files = _files(recipe, split)
        except DataError:
            continue
        if len(files):
            with Image.open(files.images[0]) as im:
                return im.size[1], im.size[0]
    raise ExportError("edge exports need a static input size: set --input-size (export.input_size); "
                      f"no images found under data.root {recipe.data.root!r} to take it from")


def check_calibration_split(recipe: Recipe, count: int = 100):
    """The training split's files if it holds at least ``count`` images, else :class:`ExportError`."""
    if count < 1:
        raise UsageError(f"calibration image count must be >= 1, got {count!r}")
    split = recipe.data.train_split
    try:
        files = _files(recipe, split)
    except DataError as e:
        raise ExportError(f"int8 calibration needs the training images: {e}") from None
    if len(files) < count:
        raise ExportError(f"int8 calibration needs {count} images from data.train_split {split!r} under "
                          f"{recipe.data.root!r}; found {len(files)}")
    return files


def calibration_images(recipe: Recipe, size, count: int = 100) -> np.ndarray:
    """``count`` training images (evenly spaced over the split), resized and normalised: float32 [N,H,W,3]."""
    from lps_keras.data.common import load_pair_numpy

    files = check_calibration_split(recipe, count)
    picks = np.unique(np.linspace(0, len(files) - 1, count).round().astype(int))
    return np.stack([normalise(_resize(load_pair_numpy(files, int(i))[0], size)) for i in picks])


def report_images(recipe: Recipe, size, limit: Optional[int] = None):
    """``(images uint8 [H,W,3] at size, labels or None per image, description)`` for the accuracy report.

    The validation split with its labels when it exists; else training images without labels
    (agreement only); else deterministic synthetic images (said so in the description).
    """
    from lps_keras.data.common import load_pair_numpy

    for split, with_labels in ((recipe.data.val_split, True), (recipe.data.train_split, False)):
        try:
            files = _files(recipe, split)
        except DataError:
            continue
        if not len(files):
            continue
        n = len(files) if limit is None else min(limit, len(files))
        pairs = [load_pair_numpy(files, i) for i in range(n)]
        images = [_resize(image, size) for image, _ in pairs]
        labels = [label if with_labels else None for _, label in pairs]
        return images, labels, f"{n} images of {recipe.data.dataset} split {split!r}"
    from lps_keras.export.savedmodel import sample_image

    images = [sample_image(*size, seed=s) for s in range(limit or 4)]
    return images, [None] * len(images), (f"{len(images)} synthetic images (no dataset under data.root "
                                           f"{recipe.data.root!r}: agreement only, not a real-image measure)")


def _labels(logits: np.ndarray, out_hw) -> np.ndarray:
    logits = np.asarray(logits, np.float32)
    if logits.shape[1:3] != tuple(out_hw):
        logits = resize_bilinear_np(logits, *out_hw)
    return np.asarray(logits).argmax(-1)[0]


def reference_logits(reference: Callable, images) -> list[np.ndarray]:
    """The fp32 SavedModel's logits for every image, computed once for all artefacts."""
    return [np.asarray(reference(normalise(image)[None]), np.float32) for image in images]


def accuracy_report(predict: Callable, ref_logits: list, images, labels, num_classes: int) -> dict:
    """Label agreement of ``predict`` (``x -> logits``) with the reference logits, and both mIoUs when labelled."""
    from lps_keras.metrics import ConfusionMatrix

    has_labels = all(lab is not None for lab in labels)
    cm_ref, cm_edge = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    agree = total = 0
    max_rel, seconds = 0.0, 0.0
    for image, label, ref in zip(images, labels, ref_logits):
        out_hw = label.shape if label is not None else image.shape[:2]
        t0 = time.perf_counter()
        got = np.asarray(predict(normalise(image)[None]), np.float32)
        seconds += time.perf_counter() - t0
        if ref.shape != got.shape:
            raise ExportError(f"artefact logits {got.shape} differ in shape from the SavedModel's {ref.shape}")
        max_rel = max(max_rel, float(np.abs(got - ref).max() / (np.abs(ref).max() or 1.0)))
        ref_labels, edge_labels = _labels(ref, out_hw), _labels(got, out_hw)
        agree += int((edge_labels == ref_labels).sum())
        total += edge_labels.size
        if has_labels:
            cm_ref.update(label, ref_labels)
            cm_edge.update(label, edge_labels)
    report = {"images": len(images), "label_agreement": agree / max(total, 1), "logits_max_rel_error": max_rel,
              "seconds_per_image": seconds / max(len(images), 1)}
    if has_labels:
        ref_miou, edge_miou = cm_ref.result().miou, cm_edge.result().miou
        report.update({"miou_reference": 100 * ref_miou, "miou": 100 * edge_miou,
                       "miou_change_points": 100 * (edge_miou - ref_miou)})
    return report


def write_report(path, report: dict) -> Path:
    return fileio.atomic_write_json(path, report)


def format_report(name: str, report: dict) -> str:
    text = (f"{name}: {report['size_bytes'] / 1e6:.2f} MB, labels agree with the fp32 SavedModel "
            f"{report['label_agreement']:.2%}")
    if "miou" in report:
        text += (f", mIoU {report['miou']:.2f} vs {report['miou_reference']:.2f} "
                 f"({round(report['miou_change_points'], 2) + 0.0:+.2f} points)")
    return text + f" on {report['images_description']}"


def artefact_report_path(artefact) -> Path:
    artefact = Path(artefact)
    return artefact.with_name(f"{artefact.stem}_accuracy.json")
