"""Reduced-precision variants of a model and how far they drift from fp32.

``bf16`` computes in bfloat16 (Keras' ``mixed_bfloat16`` policy; variables stay float32) for CPUs
with AVX512-BF16/AMX. :func:`reference_outputs` is the Keras model's output as a served graph
would return it (normalised in numpy, logits resized in numpy), the reference every export is
verified against.
"""

from __future__ import annotations

import numpy as np

from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD

PRECISIONS = ("fp32", "bf16")


def bf16_model(deploy_model):
    """A copy of ``deploy_model`` computing in bfloat16 (variables stay float32).

    Built with Keras' ``mixed_bfloat16`` policy, so on CPUs with AVX512-BF16/AMX oneDNN runs the
    convolutions in bf16 while the weights keep full precision for the casts.
    """
    from lps_keras.families import with_dtype

    return with_dtype(deploy_model, "mixed_bfloat16", name=f"{deploy_model.name}_bf16")


def resize_bilinear_np(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Align-corners bilinear resize of NHWC ``x`` in float64 (independent reference)."""
    x = np.asarray(x, np.float64)
    _, h, w, _ = x.shape

    def coords(n_in, n_out):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = coords(h, out_h)
    x0, x1, fx = coords(w, out_w)
    rows = x[:, y0] + (x[:, y1] - x[:, y0]) * fy[None, :, None, None]
    return rows[:, :, x0] + (rows[:, :, x1] - rows[:, :, x0]) * fx[None, None, :, None]


def reference_outputs(keras_model, images_uint8: np.ndarray, precision="fp32") -> dict:
    """Keras model output for uint8 ``images``: normalised in numpy, logits resized in numpy."""
    x = (images_uint8.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32)
    model = bf16_model(keras_model) if precision == "bf16" else keras_model
    logits = np.asarray(model(x, training=False), np.float32)
    h, w = images_uint8.shape[1:3]
    if logits.shape[1:3] != (h, w):
        logits = resize_bilinear_np(logits, h, w)
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return {"logits": logits, "probabilities": e / e.sum(-1, keepdims=True),
            "labels": logits.argmax(-1).astype(np.int32)}



def bf16_parity(deploy_model, image: np.ndarray) -> dict:
    """Label agreement and logits error of the bf16 variant against fp32 on ``image`` (uint8 HWC)."""
    batch = np.asarray(image, np.uint8)[None]
    fp32 = reference_outputs(deploy_model, batch, precision="fp32")
    bf16 = reference_outputs(deploy_model, batch, precision="bf16")
    scale = np.abs(fp32["logits"]).max() or 1.0
    return {
        "label_agreement": float((fp32["labels"] == bf16["labels"]).mean()),
        "logits_max_rel_error": float(np.abs(bf16["logits"] - fp32["logits"]).max() / scale),
        "logits_mean_rel_error": float(np.abs(bf16["logits"] - fp32["logits"]).mean() / scale),
        "image_shape": list(np.shape(image)),
    }
