import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import randomize_batchnorm

from lps_keras.layers import BilinearResize, PathInteraction, RepConvBlock, resize_bilinear, resize_bilinear_gather


def np_resize_align_corners(x, out_h, out_w):
    """Reference from the align_corners definition: output i samples input i*(in-1)/(out-1)."""
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c), dtype=np.float64)
    for i in range(out_h):
        y = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
        y0 = int(np.floor(y))
        y1 = min(y0 + 1, h - 1)
        fy = y - y0
        for j in range(out_w):
            xx = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
            x0 = int(np.floor(xx))
            x1 = min(x0 + 1, w - 1)
            fx = xx - x0
            top = x[:, y0, x0] * (1 - fx) + x[:, y0, x1] * fx
            bot = x[:, y1, x0] * (1 - fx) + x[:, y1, x1] * fx
            out[:, i, j] = top * (1 - fy) + bot * fy
    return out


def np_conv3x3_pad1(x, k, stride):
    """NHWC conv with one pixel of zero padding on every side (PyTorch padding=1)."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w, _ = x.shape
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((n, oh, ow, k.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            patch = xp[:, dy: dy + stride * (oh - 1) + 1: stride, dx: dx + stride * (ow - 1) + 1: stride]
            out += np.einsum("nhwc,co->nhwo", patch, k[dy, dx])
    return out


@pytest.mark.parametrize("in_hw, out_hw", [((5, 7), (9, 13)), ((9, 13), (4, 6)), ((6, 6), (1, 1)), ((1, 4), (3, 8))])
@pytest.mark.parametrize("impl", ["tf", "gather"])
def test_resize_matches_align_corners_definition(in_hw, out_hw, impl):
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype("float32")
    fn = resize_bilinear if impl == "tf" else resize_bilinear_gather
    got = np.asarray(fn(tf.constant(x), out_hw))
    np.testing.assert_allclose(got, np_resize_align_corners(x.astype(np.float64), *out_hw), rtol=1e-5, atol=1e-5)


def test_resize_lowers_to_native_resize_bilinear():
    fn = tf.function(lambda x: resize_bilinear(x, (8, 8)))
    graph = fn.get_concrete_function(tf.TensorSpec([1, None, None, 3])).graph
    ops = [op for op in graph.get_operations() if op.type == "ResizeBilinear"]
    assert len(ops) == 1 and ops[0].get_attr("align_corners") and not ops[0].get_attr("half_pixel_centers")


def test_bilinear_resize_layer_sizes():
    x = np.zeros((1, 1024, 2048, 3), "float32")
    assert BilinearResize(scale=0.75)(x).shape == (1, 768, 1536, 3)
    assert BilinearResize(scale=0.375)(np.zeros((1, 37, 53, 3), "float32")).shape == (1, 13, 19, 3)  # int(37*.375)
    ref = np.zeros((1, 5, 6, 2), "float32")
    assert BilinearResize()([np.ones((1, 3, 3, 4), "float32"), ref]).shape == (1, 5, 6, 4)
    with pytest.raises(ValueError, match="-1"):
        BilinearResize(scale=-1)


def test_path_interaction_uses_original_inputs():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1, s, s, 2)).astype("float32") for s in (8, 4, 3)]
    out = PathInteraction()(xs)
    for i, xi in enumerate(xs):
        ref = xi.astype(np.float64)
        for j, xj in enumerate(xs):
            if i != j:
                ref = ref + np_resize_align_corners(xj.astype(np.float64), *xi.shape[1:3])
        np.testing.assert_allclose(np.asarray(out[i]), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(8, 10), (7, 9)])
def test_stride2_conv_pads_one_on_every_side(hw):
    block = RepConvBlock(5, strides=2, deploy=True)
    x = np.random.default_rng(2).normal(size=(1, *hw, 3)).astype("float32")
    y = np.asarray(block(x))
    k, b = (np.asarray(w, np.float64) for w in block.conv.get_weights())
    ref = np.maximum(np_conv3x3_pad1(x.astype(np.float64), k, 2) + b, 0)
    assert y.shape == ref.shape == (1, (hw[0] + 1) // 2, (hw[1] + 1) // 2, 5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides, c_in, identity", [(1, 6, True), (1, 4, False), (2, 6, False)])
def test_branches_and_fusion(strides, c_in, identity):
    block = RepConvBlock(6, strides=strides)
    x = np.random.default_rng(3).normal(size=(2, 9, 11, c_in)).astype("float32")
    block(x)
    assert (block.bn_identity is not None) == identity
    randomize_batchnorm(keras.Sequential([block]), seed=4)
    train_out = np.asarray(block(x, training=False), np.float64)
    k, b = block.fused_kernel_bias()
    ref = np.maximum(np_conv3x3_pad1(x.astype(np.float64), k, strides) + b, 0)
    np.testing.assert_allclose(ref, train_out, rtol=1e-4, atol=1e-5)


def test_config_round_trip():
    for layer in (RepConvBlock(8, strides=2, use_identity=False, name="b"), BilinearResize(scale=0.25),
                  PathInteraction()):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="3"):
        RepConvBlock(8, strides=3)
