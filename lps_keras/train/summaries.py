"""TensorBoard summaries written through core ``tf.summary.write`` (TensorBoard itself is not a dependency)."""

from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- summaries
def _summary_metadata(plugin: str, data_class: int):
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    meta.data_class = data_class
    return meta


def summary_scalar(tag: str, value: float, step: int) -> None:
    """``tf.summary.scalar`` without the TensorBoard package (which TF does not depend on).

    Writes the same event TensorBoard's scalar plugin reads, through the core ``tf.summary.write``.
    """
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=_summary_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR))


def summary_images(tag: str, images_uint8: np.ndarray, step: int) -> None:
    """``tf.summary.image`` without TensorBoard: ``[width, height, png, png, ...]`` strings, plugin "images"."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    images = np.asarray(images_uint8, np.uint8)
    pngs = [tf.io.encode_png(img) for img in images]
    h, w = images.shape[1:3]
    tensor = tf.stack([tf.constant(str(w)), tf.constant(str(h)), *pngs])
    tf.summary.write(tag, tensor, step=step,
                     metadata=_summary_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE))

