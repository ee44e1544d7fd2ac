"""Streaming confusion matrix and the semantic-segmentation scores derived from it.

The matrix has one row per ground-truth class and ``num_classes + 1`` columns: the extra last
column counts predictions outside ``[0, num_classes)``. Keras ``MeanIoU`` drops such pixels,
which silently inflates the score of a broken model; here they stay in the denominators as
false negatives of their ground-truth class and are a false positive of no class. This is the
rule of the official Cityscapes script, where a prediction of a label that is not evaluated
counts against the ground-truth class only.

Ground-truth pixels equal to ``ignore_index`` are dropped before counting, so they are never a
false positive of anything. Ground-truth values outside ``[0, num_classes)`` that are not
``ignore_index`` are a data error and raise.

IoU of class c is ``TP / (TP + FP + FN)``; mIoU averages over the classes whose union is not
empty. A class predicted somewhere but absent from the ground truth therefore scores 0 and is
averaged; a class absent from both is left out (its IoU is NaN).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["ConfusionMatrix", "SegmentationResult", "tf_confusion_update", "evaluate_predictions"]


# --------------------------------------------------------------------------- result
@dataclasses.dataclass(frozen=True)
class SegmentationResult:
    """Scores of one confusion matrix. NaN marks a class that takes no part in an average."""

    confusion: np.ndarray  # int64 [C, C + 1]; rows ground truth, last column out-of-range predictions
    iou: np.ndarray  # float64 [C]; NaN where the union is empty
    class_accuracy: np.ndarray  # float64 [C]; recall, NaN where the class is absent from the ground truth
    miou: float
    pixel_accuracy: float
    mean_class_accuracy: float

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def num_pixels(self) -> int:
        return int(self.confusion.sum())

    @property
    def out_of_range_predictions(self) -> int:
        return int(self.confusion[:, -1].sum())

    def table(self, class_names: Optional[Sequence[str]] = None) -> str:
        """Per-class IoU / accuracy / pixel counts as a fixed-width text table."""
        names = _class_names(class_names, self.num_classes)
        gt = self.confusion.sum(axis=1)
        pred = self.confusion[:, :-1].sum(axis=0)
        width = max(10, *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'gt pixels':>12}  {'pred pixels':>12}"]
        lines.append("-" * len(lines[0]))
        for c, name in enumerate(names):
            lines.append(
                f"{name:<{width}}  {_pct(self.iou[c]):>7}  {_pct(self.class_accuracy[c]):>7}  "
                f"{int(gt[c]):>12d}  {int(pred[c]):>12d}"
            )
        lines.append("-" * len(lines[0]))
        lines.append(f"{'mIoU':<{width}}  {_pct(self.miou):>7}")
        lines.append(f"{'pixel acc':<{width}}  {_pct(self.pixel_accuracy):>7}")
        lines.append(f"{'mean acc':<{width}}  {_pct(self.mean_class_accuracy):>7}")
        if self.out_of_range_predictions:
            lines.append(f"out-of-range predictions (counted as errors): {self.out_of_range_predictions}")
        return "\n".join(lines)

    def to_dict(self, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """JSON-able summary; NaN becomes None because JSON has no NaN."""
        names = _class_names(class_names, self.num_classes)
        return {
            "miou": _json_float(self.miou),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "mean_class_accuracy": _json_float(self.mean_class_accuracy),
            "num_pixels": self.num_pixels,
            "out_of_range_predictions": self.out_of_range_predictions,
            "per_class": {
                name: {"iou": _json_float(self.iou[c]), "accuracy": _json_float(self.class_accuracy[c])}
                for c, name in enumerate(names)
            },
            "confusion": self.confusion.tolist(),
        }


def _class_names(class_names, num_classes):
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(names)}: {names!r}")
    return names


def _pct(value) -> str:
    return "-" if math.isnan(value) else f"{100.0 * value:.2f}"


def _json_float(value) -> Optional[float]:
    value = float(value)
    return None if math.isnan(value) else value


def scores_from_confusion(confusion) -> SegmentationResult:
    """Scores of a ``[C, C + 1]`` (or ``[C, C]``) confusion matrix, rows = ground truth."""
    m = _as_matrix(confusion)
    tp = np.diag(m[:, :-1]).astype(np.float64)
    gt = m.sum(axis=1).astype(np.float64)  # includes out-of-range predictions: they are FN
    pred = m[:, :-1].sum(axis=0).astype(np.float64)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        class_acc = np.where(gt > 0, tp / gt, np.nan)
    total = gt.sum()
    return SegmentationResult(
        confusion=m,
        iou=iou,
        class_accuracy=class_acc,
        miou=_nanmean(iou),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
        mean_class_accuracy=_nanmean(class_acc),
    )


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _as_matrix(confusion) -> np.ndarray:
    m = np.asarray(confusion)
    if m.ndim != 2 or m.shape[1] not in (m.shape[0], m.shape[0] + 1):
        raise ValueError(f"confusion matrix must have shape [C, C] or [C, C + 1], got {m.shape}")
    if m.shape[1] == m.shape[0]:
        m = np.concatenate([m, np.zeros((m.shape[0], 1), m.dtype)], axis=1)
    return m.astype(np.int64)


# --------------------------------------------------------------------------- accumulator
class ConfusionMatrix:
    """Dataset-level accumulator: ``update`` per batch, ``result`` at the end.

    ``update`` takes integer label and prediction maps of the same (any) shape, as numpy
    arrays or tensors. ``add`` takes a matrix already counted elsewhere, e.g. by
    :func:`tf_confusion_update` inside a ``tf.function``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    def update(self, labels, preds) -> ConfusionMatrix:
        labels = np.asarray(labels)
        preds = np.asarray(preds)
        if labels.shape != preds.shape:
            raise ValueError(
                f"labels and predictions must have the same shape, got {labels.shape} and {preds.shape} "
                "(pass argmax predictions at label resolution, not logits)"
            )
        for name, a in (("labels", labels), ("predictions", preds)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
                raise ValueError(f"{name} must be integer class indices, got dtype {a.dtype}")
        gt = labels.reshape(-1).astype(np.int64)
        pred = preds.reshape(-1).astype(np.int64)
        valid = gt != self.ignore_index
        gt, pred = gt[valid], pred[valid]
        bad = (gt < 0) | (gt >= self.num_classes)
        if bad.any():
            values = np.unique(gt[bad])[:10].tolist()
            raise ValueError(
                f"ground-truth labels outside [0, {self.num_classes}) and not ignore_index={self.ignore_index}: "
                f"{values}"
            )
        c1 = self.num_classes + 1
        pred = np.where((pred >= 0) & (pred < self.num_classes), pred, self.num_classes)
        counts = np.bincount(gt * c1 + pred, minlength=self.num_classes * c1)
        self.matrix += counts.reshape(self.num_classes, c1)
        return self

    def add(self, confusion) -> ConfusionMatrix:
        """Add a ``[C, C + 1]`` or ``[C, C]`` count matrix (numpy or tensor)."""
        m = _as_matrix(confusion)
        if m.shape[0] != self.num_classes:
            raise ValueError(f"confusion matrix has {m.shape[0]} classes, this accumulator {self.num_classes}")
        self.matrix += m
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge ConfusionMatrix(num_classes={other.num_classes}, ignore_index={other.ignore_index}) "
                f"into ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[...] = 0

    def result(self) -> SegmentationResult:
        return scores_from_confusion(self.matrix.copy())

    def to_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index, "matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfusionMatrix:
        cm = cls(d["num_classes"], d.get("ignore_index", 255))
        return cm.add(np.asarray(d["matrix"], np.int64))

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.matrix.sum())})"
        )


# --------------------------------------------------------------------------- TF path
def tf_confusion_update(labels, logits_or_preds, num_classes: int, ignore_index: int = 255):
    """Count one batch inside the TF graph; returns an int64 ``[C, C + 1]`` tensor.

    ``logits_or_preds`` is either class scores with one more (last) axis than ``labels`` or
    integer predictions of the labels' shape. Labels ``[..., 1]`` are squeezed when scores are
    given. The last column counts out-of-range predictions, as in :class:`ConfusionMatrix`
    (whose ``add`` accepts the result). Ground-truth values outside the class range that are
    not ``ignore_index`` fail a runtime assertion.
    """
    import tensorflow as tf

    num_classes = int(num_classes)
    labels = tf.convert_to_tensor(labels)
    x = tf.convert_to_tensor(logits_or_preds)
    if (
        labels.shape.rank is not None
        and labels.shape.rank == x.shape.rank
        and labels.shape[-1] == 1
        and x.shape[-1] == num_classes
        and num_classes > 1
        and x.dtype.is_floating
    ):
        labels = tf.squeeze(labels, -1)
    if x.shape.rank is not None and labels.shape.rank is not None and x.shape.rank == labels.shape.rank + 1:
        preds = tf.argmax(x, axis=-1, output_type=tf.int32)
    elif x.dtype.is_floating:
        raise ValueError(
            f"logits_or_preds: float tensor of shape {x.shape} is neither logits for labels of shape "
            f"{labels.shape} (one extra class axis) nor integer predictions"
        )
    else:
        preds = tf.cast(x, tf.int32)
    if labels.shape.is_fully_defined() and preds.shape.is_fully_defined() and labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ in shape")

    gt = tf.reshape(tf.cast(labels, tf.int32), [-1])
    pred = tf.reshape(preds, tf.shape(gt))
    valid = tf.not_equal(gt, ignore_index)
    gt = tf.boolean_mask(gt, valid)
    pred = tf.boolean_mask(pred, valid)
    checks = [
        tf.debugging.assert_non_negative(gt, message="ground-truth label < 0 (not ignore_index)"),
        tf.debugging.assert_less(
            gt, num_classes, message=f"ground-truth label >= num_classes={num_classes} (not ignore_index)"
        ),
    ]
    with tf.control_dependencies(checks):
        in_range = (pred >= 0) & (pred < num_classes)
        pred = tf.where(in_range, pred, num_classes)
        c1 = num_classes + 1
        counts = tf.math.bincount(
            gt * c1 + pred, minlength=num_classes * c1, maxlength=num_classes * c1, dtype=tf.int64
        )
    return tf.reshape(counts, [num_classes, c1])


def _split_batch(batch):
    if isinstance(batch, dict):
        try:
            return batch["image"], batch["label"]
        except KeyError:
            raise ValueError(f"dataset element dict must have 'image' and 'label', got keys {sorted(batch)}") from None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"dataset elements must be (image, label) or a dict with 'image'/'label', got {type(batch)}")


def evaluate_predictions(
    model_fn: Callable,
    dataset: Iterable,
    num_classes: int,
    ignore_index: int = 255,
    progress: bool = True,
    steps: Optional[int] = None,
    on_batch: Optional[Callable] = None,
) -> SegmentationResult:
    """Full-resolution evaluation: logits are bilinearly upsampled (align_corners) to the labels.

    ``model_fn(images)`` returns logits ``[B, h, w, C]``; ``dataset`` yields ``(image, label)``
    batches (labels ``[B, H, W]`` or ``[B, H, W, 1]``). ``steps`` limits the number of
    batches. ``on_batch(images, labels, preds)`` (optional) sees each batch's full-resolution
    predictions, e.g. to write PNGs.
    """
    import keras
    import tensorflow as tf

    num_classes = int(num_classes)

    @tf.function(reduce_retracing=True)
    def _count(labels, logits):
        if labels.shape.rank == 4:
            labels = tf.squeeze(labels, -1)
        size = tf.shape(labels)[1:3]
        logits = tf.cast(logits, tf.float32)
        # ResizeBilinear(align_corners=True): tf.image.resize has only half-pixel centres.
        logits = tf.raw_ops.ResizeBilinear(images=logits, size=size, align_corners=True, half_pixel_centers=False)
        preds = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf_confusion_update(labels, preds, num_classes, ignore_index), preds

    if steps is None and isinstance(dataset, tf.data.Dataset):
        n = int(dataset.cardinality())
        steps = n if n > 0 else None  # unknown / infinite cardinality is negative
    bar = keras.utils.Progbar(steps, stateful_metrics=["mIoU"], unit_name="batch") if progress else None
    cm = ConfusionMatrix(num_classes, ignore_index)
    seen = 0
    for i, batch in enumerate(dataset):
        if steps is not None and i >= steps:
            break
        images, labels = _split_batch(batch)
        logits = model_fn(images)
        if isinstance(logits, dict):
            raise ValueError(f"model_fn must return a logits tensor, got a dict with keys {sorted(logits)}")
        counts, preds = _count(tf.convert_to_tensor(labels), tf.convert_to_tensor(logits))
        cm.add(counts.numpy())
        if on_batch is not None:
            on_batch(images, labels, preds)
        seen = i + 1
        if bar is not None:
            r = cm.result()
            bar.update(i + 1, values=[("mIoU", r.miou if not math.isnan(r.miou) else 0.0)], finalize=False)
    if bar is not None:
        bar.update(seen, finalize=True)
    return cm.result()
