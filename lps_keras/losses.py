"""Segmentation losses: pixel-averaged softmax cross-entropy and its OHEM variant, optionally class-weighted.

Both take logits ``[B, h, w, C]`` and integer labels ``[B, H, W]`` (or ``[B, H, W, 1]``) with
``ignore_index`` for unlabelled pixels. Logits smaller than the labels are bilinearly upsampled
(align_corners=True) inside the loss, as the paper trains on the crop-size logits.

The value is the mean over the valid pixels of the whole batch, not a mean of per-image means,
so images with many ignored pixels do not weigh more. ``keras.losses.Loss`` would average
per-sample values over the batch size, so ``call`` returns that batch mean as a one-element
vector: the ``"sum_over_batch_size"`` reduction then leaves it unchanged (sum of one value
divided by one) and still applies Keras' ``1 / num_replicas`` scaling under ``tf.distribute``,
which a 0-d value would skip (gradients would be summed over replicas unscaled). Under a
distribution strategy each replica averages its own valid pixels, the usual data-parallel
approximation (PyTorch DDP does the same).

With ``class_weights`` (one per class; :mod:`lps_keras.class_balance`) the value is
``sum_i w(y_i) nll_i / sum_i w(y_i)`` over the kept pixels, PyTorch's ``CrossEntropyLoss(weight=...)``.

Computation is in float32 whatever the logits' dtype (mixed precision). Label values outside
``[0, C)`` are treated like ``ignore_index``; the data pipeline rejects such labels earlier.
"""

from __future__ import annotations

import keras
from keras import ops

from lps_keras.layers import resize_bilinear

__all__ = ["SegmentationCrossEntropy", "OHEMCrossEntropy", "build_loss"]


class _PixelLoss(keras.losses.Loss):
    """Shared input handling: float32 logits at label size, int labels, valid-pixel mask."""

    def __init__(self, ignore_index=255, upsample=True, class_weights=None, label_stride=1, name=None,
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        self.ignore_index = int(ignore_index)
        self.upsample = bool(upsample)
        if isinstance(label_stride, bool) or int(label_stride) != label_stride or label_stride < 1:
            raise ValueError(f"{type(self).__name__}: label_stride must be an int >= 1, got {label_stride!r}")
        # The loss at 1/label_stride of the label resolution: every label_stride-th label pixel (nearest, centred),
        # the logits upsampled to that size only. For N0 at 256x256 the full-size upsample + cross-entropy took
        # 136 of a step's 167 ms on the 2-core CPU: a proxy's cheapest speed-up (issue 22, item 4).
        self.label_stride = int(label_stride)
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if not class_weights or not all(w > 0 and w < float("inf") for w in class_weights):
                raise ValueError(f"{type(self).__name__}: class_weights must be positive and finite, "
                                 f"got {class_weights!r}")
        self.class_weights = class_weights

    def _prepare(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        labels = y_true
        if len(labels.shape) == 4:
            labels = ops.squeeze(labels, axis=-1)
        labels = ops.cast(labels, "int32")
        if len(logits.shape) != 4 or len(labels.shape) != 3:
            raise ValueError(
                f"{type(self).__name__}: expected logits [B, h, w, C] and labels [B, H, W], "
                f"got {tuple(logits.shape)} and {tuple(y_true.shape)}"
            )
        if self.label_stride > 1:
            first = self.label_stride // 2
            labels = labels[:, first::self.label_stride, first::self.label_stride]
        lh, lw = labels.shape[1], labels.shape[2]
        ph, pw = logits.shape[1], logits.shape[2]
        static_same = None not in (lh, lw, ph, pw) and (lh, lw) == (ph, pw)
        if not static_same:
            if not self.upsample:
                raise ValueError(
                    f"{type(self).__name__}: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in "
                    "size and upsample=False"
                )
            size = (ops.shape(labels)[1], ops.shape(labels)[2])
            logits = resize_bilinear(logits, size)
        num_classes = logits.shape[-1]
        valid = ops.logical_and(ops.not_equal(labels, self.ignore_index), labels >= 0)
        valid = ops.logical_and(valid, labels < num_classes)
        safe_labels = ops.where(valid, labels, 0)
        log_probs = ops.log_softmax(logits, axis=-1)
        true_log_prob = ops.squeeze(ops.take_along_axis(log_probs, safe_labels[..., None], axis=-1), axis=-1)
        weights = None
        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(f"{type(self).__name__}: {len(self.class_weights)} class weights for "
                                 f"{num_classes} classes")
            weights = ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe_labels)
        return -true_log_prob, valid, weights

    @staticmethod
    def _masked_mean(nll, keep, weights=None):
        w = ops.cast(keep, "float32")
        if weights is not None:
            w = w * weights  # sum w(y) nll / sum w(y) over the kept pixels: PyTorch's weighted mean
        # divide_no_nan: a batch with no valid pixel contributes 0, not NaN.
        return ops.reshape(ops.divide_no_nan(ops.sum(nll * w), ops.sum(w)), (1,))

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            # Keras would multiply the batch mean by per-sample weights, which is not a pixel
            # weighting; mark pixels out with ignore_index instead.
            raise ValueError(f"{type(self).__name__} does not support sample_weight; use ignore_index labels")
        return super().__call__(y_true, y_pred)

    def call(self, y_true, y_pred):
        return self._compute(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update({"ignore_index": self.ignore_index, "upsample": self.upsample,
                       "class_weights": self.class_weights, "label_stride": self.label_stride})
        return config


@keras.saving.register_keras_serializable(package="lps_keras")
class SegmentationCrossEntropy(_PixelLoss):
    """Softmax cross-entropy averaged over the non-ignored pixels of the batch (0 if none)."""

    def __init__(self, ignore_index=255, upsample=True, class_weights=None, label_stride=1,
                 name="segmentation_cross_entropy", **kwargs):
        super().__init__(ignore_index=ignore_index, upsample=upsample, class_weights=class_weights,
                         label_stride=label_stride, name=name, **kwargs)

    def _compute(self, y_true, y_pred):
        nll, valid, weights = self._prepare(y_true, y_pred)
        return self._masked_mean(nll, valid, weights)


@keras.saving.register_keras_serializable(package="lps_keras")
class OHEMCrossEntropy(_PixelLoss):
    """Online hard example mining: cross-entropy over the pixels the model finds hard.

    A valid pixel is kept when its true-class probability is below ``threshold``. If that keeps
    fewer than ``min_kept`` pixels, the threshold is raised to the ``min_kept``-th smallest
    true-class probability of the batch, so the ``min_kept`` hardest pixels are kept (ties at
    that value are all kept; all valid pixels when there are fewer than ``min_kept``). This is
    PaddleSeg's / mmseg's ``max(threshold, k-th smallest)`` rule with an inclusive bound, so at
    least ``min_kept`` pixels always survive. The loss is the mean over kept pixels.
    """

    def __init__(
        self, ignore_index=255, threshold=0.7, min_kept=100000, upsample=True, class_weights=None, label_stride=1,
        name="ohem_cross_entropy", **kwargs
    ):
        super().__init__(ignore_index=ignore_index, upsample=upsample, class_weights=class_weights,
                         label_stride=label_stride, name=name, **kwargs)
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"OHEMCrossEntropy: threshold must be in (0, 1], got {threshold!r}")
        if int(min_kept) < 0:
            raise ValueError(f"OHEMCrossEntropy: min_kept must be >= 0, got {min_kept!r}")
        self.threshold = float(threshold)
        self.min_kept = int(min_kept)

    def _compute(self, y_true, y_pred):
        nll, valid, weights = self._prepare(y_true, y_pred)
        prob = ops.stop_gradient(ops.exp(-nll))  # hard pixels are chosen unweighted, then weighted
        kept = ops.logical_and(valid, prob < self.threshold)
        if self.min_kept > 0:
            # Invalid pixels get probability 2 (> any real one) so they never rank among the hardest.
            flat = ops.reshape(ops.where(valid, prob, 2.0), (-1,))
            n = flat.shape[0]
            if n is None:
                k = ops.minimum(self.min_kept, ops.shape(flat)[0])
            else:
                k = min(self.min_kept, n)
            hardest = ops.top_k(-flat, k, sorted=False)[0]
            kth_smallest = -ops.min(hardest)
            kept = ops.logical_or(kept, ops.logical_and(valid, prob <= kth_smallest))
        return self._masked_mean(nll, kept, weights)

    def get_config(self):
        config = super().get_config()
        config.update({"threshold": self.threshold, "min_kept": self.min_kept})
        return config


def build_loss(train_config, class_weights=None) -> keras.losses.Loss:
    """The loss named by a recipe's ``train`` section (``loss``: ``"ce"`` or ``"ohem"``, at
    ``loss_label_stride``), with per-class weights (:func:`lps_keras.class_balance.class_weights`) if given."""
    name = getattr(train_config, "loss", None)
    weights = None if class_weights is None else [float(w) for w in class_weights]
    stride = getattr(train_config, "loss_label_stride", 1)
    if name == "ce":
        return SegmentationCrossEntropy(class_weights=weights, label_stride=stride)
    if name == "ohem":
        # min_kept counts pixels at the loss's resolution: scaled with it, so OHEM keeps the same share
        min_kept = max(1, train_config.ohem_min_kept // stride ** 2) if train_config.ohem_min_kept else 0
        return OHEMCrossEntropy(threshold=train_config.ohem_threshold, min_kept=min_kept, class_weights=weights,
                                label_stride=stride)
    raise ValueError(f"train.loss: unknown loss {name!r}; expected 'ce' or 'ohem'")
