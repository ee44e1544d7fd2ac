"""Confusion-matrix metrics against hand-counted fixtures and the Cityscapes rule."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from numpy_reference import resize_align_corners

from lps_keras.metrics import ConfusionMatrix, evaluate_predictions, scores_from_confusion, tf_confusion_update

# A 3-class fixture with two ignored pixels and one out-of-range prediction (5).
GT = np.array([0, 0, 0, 1, 1, 2, 255, 255, 2, 1, 2])
PRED = np.array([0, 1, 0, 1, 5, 2, 1, 9, 0, 1, 2])
# Counted by hand; rows ground truth, columns prediction 0, 1, 2, out-of-range.
EXPECTED = np.array(
    [
        [2, 1, 0, 0],
        [0, 2, 0, 1],
        [1, 0, 2, 0],
    ]
)


def test_hand_counted_fixture():
    cm = ConfusionMatrix(3, ignore_index=255).update(GT.reshape(1, 11), PRED.reshape(1, 11))
    np.testing.assert_array_equal(cm.matrix, EXPECTED)
    r = cm.result()
    # TP = (2, 2, 2); gt = (3, 3, 3); pred = (3, 3, 2); union = gt + pred - TP = (4, 4, 3)
    np.testing.assert_allclose(r.iou, [2 / 4, 2 / 4, 2 / 3])
    assert r.miou == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert r.pixel_accuracy == pytest.approx(6 / 9)
    np.testing.assert_allclose(r.class_accuracy, [2 / 3, 2 / 3, 2 / 3])
    assert r.mean_class_accuracy == pytest.approx(2 / 3)
    assert r.out_of_range_predictions == 1
    assert r.num_pixels == 9
    table = r.table(["road", "car", "sky"])
    assert "road" in table and "55.56" in table and "out-of-range" in table


def test_cityscapes_rule():
    # 5 classes. Ignored gt pixel predicted as 2 must not make class 2 a false positive;
    # class 3 is predicted but absent from gt (IoU 0, averaged); classes 2 and 4 are absent
    # from both (NaN, excluded).
    gt = np.array([[0, 0, 1, 1, 255, 255]])
    pred = np.array([[0, 3, 1, 1, 2, 4]])
    r = ConfusionMatrix(5).update(gt, pred).result()
    assert r.iou[0] == pytest.approx(0.5)
    assert r.iou[1] == pytest.approx(1.0)
    assert math.isnan(r.iou[2]) and math.isnan(r.iou[4])
    assert r.iou[3] == 0.0
    assert r.miou == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert r.pixel_accuracy == pytest.approx(3 / 4)
    assert math.isnan(r.class_accuracy[3])
    assert r.mean_class_accuracy == pytest.approx((0.5 + 1.0) / 2)


def test_out_of_range_prediction_is_counted_not_dropped():
    gt = np.array([0, 1, 1, 1])
    good = ConfusionMatrix(2).update(gt, np.array([0, 1, 1, 1])).result()
    broken = ConfusionMatrix(2).update(gt, np.array([0, 1, 1, -3])).result()
    assert good.miou == 1.0
    # Class 1: TP 2, FN 1 (the -3), FP 0 -> 2/3; a dropping metric would still report 1.0.
    assert broken.iou[1] == pytest.approx(2 / 3)
    assert broken.pixel_accuracy == pytest.approx(3 / 4)


def test_streaming_equals_one_shot_and_merge():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(6, 9, 11))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, 6, size=gt.shape)
    one = ConfusionMatrix(6).update(gt, pred)
    streamed = ConfusionMatrix(6)
    for i in range(6):
        streamed.update(gt[i], pred[i])
    a = ConfusionMatrix(6).update(gt[:2], pred[:2])
    b = ConfusionMatrix(6).update(gt[2:], pred[2:])
    np.testing.assert_array_equal(one.matrix, streamed.matrix)
    np.testing.assert_array_equal(one.matrix, a.merge(b).matrix)
    # Independent count with a Python loop.
    ref = np.zeros((6, 7), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            ref[g, p] += 1
    np.testing.assert_array_equal(one.matrix, ref)
    assert one.result().miou == pytest.approx(streamed.result().miou)
    streamed.reset()
    assert streamed.matrix.sum() == 0
    with pytest.raises(ValueError, match="cannot merge"):
        one.merge(ConfusionMatrix(6, ignore_index=0))


def test_tf_path_equals_numpy_path():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, size=(3, 5, 6)).astype(np.int32)
    gt[rng.random(gt.shape) < 0.25] = 255
    logits = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
    ref = ConfusionMatrix(4).update(gt, logits.argmax(-1))

    counts = tf_confusion_update(tf.constant(gt), tf.constant(logits), 4, 255)
    assert counts.dtype == tf.int64 and tuple(counts.shape) == (4, 5)
    np.testing.assert_array_equal(counts.numpy(), ref.matrix)

    fn = tf.function(lambda y, x: tf_confusion_update(y, x, 4, 255))
    np.testing.assert_array_equal(fn(tf.constant(gt[..., None]), tf.constant(logits)).numpy(), ref.matrix)

    pred = rng.integers(-1, 6, size=gt.shape)  # includes out-of-range predictions
    np.testing.assert_array_equal(
        tf_confusion_update(gt, pred, 4, 255).numpy(), ConfusionMatrix(4).update(gt, pred).matrix
    )
    acc = ConfusionMatrix(4).add(counts).add(counts.numpy()[:, :4])
    np.testing.assert_array_equal(acc.matrix[:, :4], 2 * ref.matrix[:, :4])


def test_bad_ground_truth_raises():
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*\[7\]"):
        ConfusionMatrix(3).update(np.array([0, 7, 255]), np.array([0, 1, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf_confusion_update(tf.constant([0, 7]), tf.constant([0, 1]), 3, 255)
    with pytest.raises(ValueError, match="same shape"):
        ConfusionMatrix(3).update(np.zeros((2, 2), int), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="integer"):
        ConfusionMatrix(3).update(np.zeros(4, int), np.zeros(4))


def test_to_dict_is_json_and_round_trips():
    cm = ConfusionMatrix(5).update(np.array([0, 0, 1]), np.array([0, 3, 1]))
    d = json.loads(json.dumps(cm.result().to_dict(["a", "b", "c", "d", "e"]), allow_nan=False))
    assert d["per_class"]["c"]["iou"] is None and d["per_class"]["d"]["iou"] == 0.0
    assert d["miou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    back = ConfusionMatrix.from_dict(json.loads(json.dumps(cm.to_dict())))
    np.testing.assert_array_equal(back.matrix, cm.matrix)
    empty = ConfusionMatrix(2).result()
    assert math.isnan(empty.miou) and json.dumps(empty.to_dict(), allow_nan=False)
    assert scores_from_confusion(np.eye(2, dtype=int)).miou == 1.0


def test_evaluate_predictions_upsamples_with_align_corners():
    rng = np.random.default_rng(2)
    low = rng.normal(size=(4, 3, 4, 3)).astype(np.float32)
    gt = rng.integers(0, 3, size=(4, 9, 10)).astype(np.int32)
    gt[:, 0, :] = 255
    images = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((4, 9, 10, 3), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, gt)).batch(2)

    def model_fn(x):  # the image carries the sample index, so each sample gets its own logits
        return tf.gather(low, tf.cast(x[:, 0, 0, 0], tf.int32))

    seen = []
    r = evaluate_predictions(model_fn, ds, 3, 255, progress=True, on_batch=lambda x, y, p: seen.append(p.numpy()))
    ref_pred = resize_align_corners(low.astype(np.float64), 9, 10).argmax(-1)
    ref = ConfusionMatrix(3).update(gt, ref_pred)
    np.testing.assert_array_equal(r.confusion, ref.matrix)
    np.testing.assert_array_equal(np.concatenate(seen), ref_pred)
    assert r.num_pixels == 4 * 8 * 10
    r2 = evaluate_predictions(model_fn, ds, 3, 255, progress=False, steps=1)
    assert r2.num_pixels == 2 * 8 * 10
