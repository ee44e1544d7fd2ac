"""Segmentation losses against a numpy reference (log-softmax by hand)."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from numpy_reference import resize_align_corners

from lps_keras.losses import OHEMCrossEntropy, SegmentationCrossEntropy, build_loss
from lps_keras.recipe import TrainConfig


def _nll(logits, labels):
    """Per-pixel -log softmax(logits)[label] (0 where the label is ignored) and the valid mask."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(log_p, safe[..., None], -1)[..., 0]
    return np.where(valid, nll, 0.0), valid


def _ce_ref(logits, labels):
    nll, valid = _nll(logits, labels)
    return nll.sum() / max(valid.sum(), 1)


def _data(shape=(2, 5, 7), classes=4, seed=0, logit_hw=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=shape).astype(np.int32)
    labels[rng.random(shape) < 0.3] = 255
    labels[1] = 255 * (rng.random(shape[1:]) < 0.8) + labels[1] * (labels[1] != 255)  # image 2 mostly ignored
    labels = np.where(labels > 255, 255, labels).astype(np.int32)
    hw = logit_hw or shape[1:]
    logits = rng.normal(scale=2.0, size=(shape[0], *hw, classes)).astype(np.float32)
    return labels, logits


def test_cross_entropy_equals_numpy_reference():
    labels, logits = _data()
    loss = SegmentationCrossEntropy()
    expected = _ce_ref(logits, labels)
    # Mean over the batch's valid pixels, not a mean of per-image means.
    per_image = np.mean([_ce_ref(logits[i : i + 1], labels[i : i + 1]) for i in range(2)])
    assert abs(expected - per_image) > 1e-3
    value = loss(labels, logits)
    assert tuple(value.shape) == () and keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(float(loss(labels[..., None], logits)), expected, rtol=1e-5)


def test_cross_entropy_upsamples_logits_align_corners():
    labels, logits = _data(shape=(2, 9, 11), classes=3, seed=1, logit_hw=(3, 4))
    expected = _ce_ref(resize_align_corners(logits.astype(np.float64), 9, 11), labels)
    np.testing.assert_allclose(float(SegmentationCrossEntropy()(labels, logits)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="upsample=False"):
        SegmentationCrossEntropy(upsample=False)(labels, logits)


def test_all_ignored_gives_zero_and_finite_gradient():
    import tensorflow as tf

    labels = np.full((1, 3, 3), 255, np.int32)
    logits = tf.Variable(np.random.default_rng(0).normal(size=(1, 3, 3, 2)).astype(np.float32))
    for loss in (SegmentationCrossEntropy(), OHEMCrossEntropy(min_kept=4)):
        with tf.GradientTape() as tape:
            value = loss(labels, logits)
        grad = tape.gradient(value, logits)
        assert float(value) == 0.0
        assert np.all(np.isfinite(grad.numpy()))


def _ohem_fixture():
    # Two classes; logits (0, d) with label 1 give true-class probability sigmoid(d).
    probs = np.array([0.1, 0.3, 0.5, 0.8, 0.9, 0.95, 0.05])
    d = np.log(probs / (1 - probs))
    logits = np.stack([np.zeros_like(d), d], -1).reshape(1, 1, 7, 2).astype(np.float32)
    labels = np.ones((1, 1, 7), np.int32)
    labels[0, 0, 6] = 255  # the easiest-looking pixel (p = 0.05) is ignored: never kept
    return logits, labels, probs


@pytest.mark.parametrize(
    "threshold, min_kept, kept",
    [
        (0.7, 2, [0.1, 0.3, 0.5]),  # 3 pixels below 0.7 >= min_kept: threshold stays
        (0.7, 4, [0.1, 0.3, 0.5, 0.8]),  # raised to the 4th smallest probability (0.8)
        (0.7, 100, [0.1, 0.3, 0.5, 0.8, 0.9, 0.95]),  # fewer valid pixels than min_kept: all
        (0.2, 0, [0.1]),
        (0.05, 0, []),  # nothing kept -> 0
    ],
)
def test_ohem_kept_set(threshold, min_kept, kept):
    logits, labels, _ = _ohem_fixture()
    value = float(OHEMCrossEntropy(threshold=threshold, min_kept=min_kept)(labels, logits))
    expected = float(np.mean(-np.log(kept))) if kept else 0.0
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_ohem_with_upsampling_matches_reference():
    labels, logits = _data(shape=(2, 8, 8), classes=3, seed=3, logit_hw=(4, 4))
    up = resize_align_corners(logits.astype(np.float64), 8, 8)
    nll, valid = _nll(up, labels)
    p = np.exp(-nll)[valid]
    k = 20
    kth = np.sort(p)[k - 1]
    keep = (p < 0.6) | (p <= kth)
    expected = nll[valid][keep].mean()
    value = float(OHEMCrossEntropy(threshold=0.6, min_kept=k)(labels, logits))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_logits_compute_in_float32(dtype):
    import tensorflow as tf

    labels, logits = _data(seed=4)
    low = tf.cast(logits, dtype)
    rounded = tf.cast(low, "float32").numpy()
    for loss, ref in (
        (SegmentationCrossEntropy(), _ce_ref(rounded, labels)),
        (OHEMCrossEntropy(threshold=1.0, min_kept=0), _ce_ref(rounded, labels)),
    ):
        value = loss(labels, low)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        np.testing.assert_allclose(float(value), ref, rtol=1e-5)


def test_serialization_round_trip_and_build_loss():
    for loss in (SegmentationCrossEntropy(ignore_index=0, upsample=False), OHEMCrossEntropy(threshold=0.5, min_kept=7)):
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
        back = keras.saving.deserialize_keras_object(config)
        assert type(back) is type(loss) and back.get_config() == loss.get_config()
    ohem = build_loss(TrainConfig(loss="ohem", ohem_threshold=0.6, ohem_min_kept=123))
    assert isinstance(ohem, OHEMCrossEntropy) and (ohem.threshold, ohem.min_kept) == (0.6, 123)
    assert isinstance(build_loss(TrainConfig(loss="ce")), SegmentationCrossEntropy)
    with pytest.raises(ValueError, match="train.loss"):
        build_loss(TrainConfig(loss="dice"))
    with pytest.raises(ValueError, match="threshold"):
        OHEMCrossEntropy(threshold=1.5)
    with pytest.raises(ValueError, match="sample_weight"):
        SegmentationCrossEntropy()(np.zeros((1, 2, 2), np.int32), np.zeros((1, 2, 2, 2)), sample_weight=np.ones(1))


def test_keras_fit_and_evaluate_report_the_batch_pixel_mean():
    labels, _ = _data(shape=(2, 6, 6), classes=3, seed=5)
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 3)).astype(np.float32)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(3, 1), keras.layers.AveragePooling2D(2)])
    model.compile(optimizer="sgd", loss=SegmentationCrossEntropy())
    up = resize_align_corners(model.predict(x, verbose=0).astype(np.float64), 6, 6)
    value = model.evaluate(x, labels, batch_size=2, verbose=0)
    np.testing.assert_allclose(value, _ce_ref(up, labels), rtol=1e-5)
    history = model.fit(x, labels, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_distribution_scaling_under_mirrored_strategy():
    # Keras sums replica gradients; the loss must carry the 1/num_replicas factor like built-in
    # losses. Run in a subprocess: logical devices must be set before TF starts.
    code = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from lps_keras.losses import SegmentationCrossEntropy
        labels = np.array([[[0, 1], [1, 255]]], np.int32)
        logits = np.random.default_rng(0).normal(size=(1, 2, 2, 2)).astype(np.float32)
        loss = SegmentationCrossEntropy()
        single = float(loss(labels, logits))
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            per_replica = strategy.run(lambda: loss(labels, logits))
        values = [float(v) for v in strategy.experimental_local_results(per_replica)]
        print("RESULT", single, values)
        assert all(abs(v - single / 2) < 1e-6 for v in values), (single, values)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


# --------------------------------------------------------------------------- class weights
def test_class_weighted_cross_entropy_equals_numpy_reference():
    labels, logits = _data(classes=4, seed=3)
    w = np.array([0.5, 2.0, 1.0, 8.0])
    nll, valid = _nll(logits, labels)
    pw = np.where(valid, w[np.where(valid, labels, 0)], 0.0)
    expected = (pw * nll).sum() / pw.sum()  # PyTorch CrossEntropyLoss(weight=w, ignore_index=255)
    assert abs(expected - _ce_ref(logits, labels)) > 1e-2  # the weights matter on this fixture
    value = SegmentationCrossEntropy(class_weights=w)(labels, logits)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    # equal weights are the unweighted loss
    np.testing.assert_allclose(float(SegmentationCrossEntropy(class_weights=[3.0] * 4)(labels, logits)),
                               _ce_ref(logits, labels), rtol=1e-5)


def test_class_weights_combine_with_ohem():
    """Hard pixels are chosen on the unweighted probabilities, then the kept ones are weighted."""
    logits, labels, probs = _ohem_fixture()  # every valid pixel is class 1
    labels = labels.copy()
    labels[0, 0, 0] = 0  # pixel 0 becomes class 0: its true-class probability is 1 - 0.1 = 0.9
    w = np.array([5.0, 2.0])
    value = float(OHEMCrossEntropy(threshold=0.7, min_kept=0, class_weights=w)(labels, logits))
    # kept (p < 0.7): class-1 pixels with p 0.3, 0.5 (pixel 0 now has p 0.9 and is easy)
    kept = np.array([0.3, 0.5])
    expected = float((2.0 * -np.log(kept)).sum() / (2.0 * len(kept)))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_class_weights_are_checked_and_serialised():
    with pytest.raises(ValueError, match="positive"):
        SegmentationCrossEntropy(class_weights=[1.0, 0.0])
    labels, logits = _data(classes=4)
    with pytest.raises(ValueError, match="3 class weights for 4 classes"):
        SegmentationCrossEntropy(class_weights=[1.0, 1.0, 1.0])(labels, logits)
    loss = OHEMCrossEntropy(class_weights=[1.0, 2.0])
    again = OHEMCrossEntropy.from_config(loss.get_config())
    assert again.class_weights == [1.0, 2.0]
    t = TrainConfig(loss="ce", class_balance="explicit", class_weights=(1.0, 2.0))
    assert build_loss(t, [1.0, 2.0]).class_weights == [1.0, 2.0]


@pytest.mark.parametrize("stride", [2, 4])
def test_label_stride_takes_every_sth_label_and_upsamples_the_logits_only_that_far(stride):
    labels, logits = _data(shape=(2, 16, 20), classes=3, seed=4, logit_hw=(4, 5))
    sub = labels[:, stride // 2::stride, stride // 2::stride]  # nearest, centred: pixels s/2, s/2 + s, ...
    h, w = sub.shape[1:]
    expected = _ce_ref(resize_align_corners(logits.astype(np.float64), h, w), sub)
    np.testing.assert_allclose(float(SegmentationCrossEntropy(label_stride=stride)(labels, logits)), expected,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="label_stride must be an int >= 1, got 0"):
        SegmentationCrossEntropy(label_stride=0)
    # build_loss reads train.loss_label_stride; OHEM's min_kept counts pixels at that resolution.
    ohem = build_loss(TrainConfig(loss="ohem", loss_label_stride=stride, ohem_min_kept=1000))
    assert ohem.label_stride == stride and ohem.min_kept == 1000 // stride ** 2
    assert OHEMCrossEntropy.from_config(ohem.get_config()).label_stride == stride
