"""Joint image + label augmentation of the LPS-Net paper: random scale, crop (with padding), flip, colour jitter.

Every random decision is drawn from a per-example stateless seed, so a given (seed, example)
always gives the same result, in any order and with any number of parallel map calls.

Why ``tf.image`` rather than Keras' mask-aware preprocessing layers (``keras.layers.RandomFlip``
etc. accept ``{"images", "segmentation_masks"}`` dicts): in Keras 3.15 those layers take only a
Python int or ``SeedGenerator`` as seed, so inside a parallel ``tf.data`` map their draws are
not reproducible per example; ``keras.layers.RandomCrop`` *resizes* (interpolating the mask)
instead of padding when the input is smaller than the crop and needs static input sizes;
``RandomZoom`` keeps the output size, so it cannot express "scale the image by s"; and
``RandomBrightness`` is additive while the recipe's jitter strengths follow torchvision's
multiplicative ``ColorJitter``. The geometric ops below act on one stacked tensor
(image channels + label + valid mask), so image and label can never fall out of alignment.

Scaling is done crop-first: the crop window is chosen in the original image (crop / s) and
only that window is resized by s. This equals "resize the whole image, then crop" up to
sub-pixel rounding, but avoids resizing a 1024x2048 image to 2048x4096 for a 768x768 crop.
"""

from __future__ import annotations

import tensorflow as tf

from lps_keras.data.common import IGNORE_INDEX


def _uniform(seed, lo, hi):
    return tf.random.stateless_uniform([], seed=seed, minval=lo, maxval=hi)


def random_scale_crop_flip(image, label, seed, crop_size, scale_range=(0.5, 2.0), hflip=True):
    """Scale by s ~ U(scale_range), take a random crop of ``crop_size``, maybe flip horizontally.

    image: [H, W, C] float32; label: [H, W] int32. Returns the image [ch, cw, C] (padding 0),
    the label [ch, cw] (padding 255, nearest-neighbour resampled: values are never mixed) and a
    [ch, cw] float32 mask that is 1 on real pixels and 0 on padding.
    """
    s_scale, s_y, s_x, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    ch, cw = crop_size
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    s = _uniform(s_scale, float(scale_range[0]), float(scale_range[1]))
    # Window in original pixels that becomes (at most) the crop after scaling by s.
    win_h = tf.minimum(h, tf.maximum(1, tf.cast(tf.round(ch / s), tf.int32)))
    win_w = tf.minimum(w, tf.maximum(1, tf.cast(tf.round(cw / s), tf.int32)))
    y0 = tf.cast(tf.floor(_uniform(s_y, 0.0, 1.0) * tf.cast(h - win_h + 1, tf.float32)), tf.int32)
    x0 = tf.cast(tf.floor(_uniform(s_x, 0.0, 1.0) * tf.cast(w - win_w + 1, tf.float32)), tf.int32)
    image = image[y0 : y0 + win_h, x0 : x0 + win_w]
    label = label[y0 : y0 + win_h, x0 : x0 + win_w]
    out_h = tf.minimum(ch, tf.maximum(1, tf.cast(tf.round(tf.cast(win_h, tf.float32) * s), tf.int32)))
    out_w = tf.minimum(cw, tf.maximum(1, tf.cast(tf.round(tf.cast(win_w, tf.float32) * s), tf.int32)))
    image = tf.image.resize(image, [out_h, out_w], method="bilinear")
    label = tf.image.resize(label[..., None], [out_h, out_w], method="nearest")[..., 0]
    valid = tf.ones([out_h, out_w], tf.float32)
    if hflip:
        flip = _uniform(s_flip, 0.0, 1.0) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    # Pad bottom/right up to the crop size: image 0, label 255 (ignored by loss and metrics).
    pad = [[0, ch - out_h], [0, cw - out_w]]
    image = tf.pad(image, pad + [[0, 0]], constant_values=0.0)
    label = tf.pad(label, pad, constant_values=IGNORE_INDEX)
    valid = tf.pad(valid, pad, constant_values=0.0)
    channels = image.shape[-1]
    image = tf.ensure_shape(image, [ch, cw, channels])
    label = tf.ensure_shape(label, [ch, cw])
    valid = tf.ensure_shape(valid, [ch, cw])
    return image, label, valid


def color_jitter(image, seed, brightness=0.4, contrast=0.4, saturation=0.4):
    """torchvision-style ColorJitter on an RGB float image in [0, 1]: factors ~ U(max(0, 1 - x), 1 + x)."""
    s_b, s_c, s_s = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if brightness > 0:
        image = image * _uniform(s_b, max(0.0, 1.0 - brightness), 1.0 + brightness)
    if contrast > 0:
        image = tf.image.adjust_contrast(image, _uniform(s_c, max(0.0, 1.0 - contrast), 1.0 + contrast))
    if saturation > 0:
        image = tf.image.adjust_saturation(
            tf.clip_by_value(image, 0.0, 1.0), _uniform(s_s, max(0.0, 1.0 - saturation), 1.0 + saturation)
        )
    return tf.clip_by_value(image, 0.0, 1.0)


def augment(image, label, seed, config):
    """The full training augmentation for one example.

    image: [H, W, 3] float32 in [0, 1]; label: [H, W] int32 (train ids, 255 ignore); seed: [2]
    int; config: ``lps_keras.recipe.AugmentConfig``. Returns image [ch, cw, 3] in [0, 1] with
    padding 0 and label [ch, cw] int32 with padding 255.
    """
    s_geo, s_col = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image, label, valid = random_scale_crop_flip(
        image, label, s_geo, tuple(config.crop_size), tuple(config.scale_range), config.hflip
    )
    if config.brightness or config.contrast or config.saturation:
        image = color_jitter(image, s_col, config.brightness, config.contrast, config.saturation)
        image = image * valid[..., None]  # jitter must not lift the zero padding
    return image, label
