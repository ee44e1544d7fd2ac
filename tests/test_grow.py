import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import randomize_batchnorm

from lps_keras.arch import EXPANSION_OPS, EXPANSION_OPS_BY_NAME, Arch
from lps_keras.grow import grow_model
from lps_keras.model import build_model
from lps_keras.reparam import reparameterize

# Two paths so that widened and deepened blocks also go through both interactions; stages 4 and 5
# equally wide so stage-5 block 1 has an identity branch too.
PARENT = Arch((1, 2, 1, 2, 1), (4, 8, 8, 16, 16), (0.5, 0.25), num_classes=3)
ONE_PATH = Arch((1, 1, 2, 1, 2), (4, 8, 8, 16, 24), (0.5,), num_classes=3)
SIZE = 96
OPS = {dim: [op.name for op in EXPANSION_OPS if op.dimension == dim] for dim in ("depth", "width", "resolution")}


def _trained_like(arch, seed=1):
    """Random kernels (fresh init), random BN statistics and affines, random head bias.

    The head is scaled so the logits have a trained network's spread (sd 4) rather than the ~50
    of a random one: the float32 rounding of a wider conv's longer sums is relative (~1e-7), and the
    1e-5 bound is meant for logits of ordinary size.
    """
    model = build_model(arch)
    randomize_batchnorm(model, seed=seed)
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, np.zeros_like(bias)])
    scale = 4.0 / float(np.std(model(_images(), training=False)))
    bias = np.random.default_rng(seed).normal(0.0, 1.0, bias.shape)
    head.set_weights([kernel * scale, bias.astype("float32")])
    return model


def _images(n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype("float32")


def _logits(model, x):
    return np.asarray(model(x, training=False), np.float64)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("op_name", OPS["depth"] + OPS["width"])
def test_depth_and_width_growth_preserves_logits(op_name, k):
    op = EXPANSION_OPS_BY_NAME[op_name]
    parent = _trained_like(PARENT)
    child_arch = PARENT.expand(op, k)
    child = grow_model(parent, child_arch)
    assert child.count_params() > parent.count_params()
    x = _images()
    ref, got = _logits(parent, x), _logits(child, x)
    assert ref.std() > 1.0  # a meaningful comparison, not two near-constant maps
    assert got.shape == ref.shape
    # Identity blocks add an exact 0 and multiply by an exact 1, which was bit-for-bit on the AMD CPUs; on a
    # Xeon with AMX, oneDNN computes the extra 3x3 conv with a kernel that rounds (up to 1e-5 absolute on these
    # logits of sd 4, 2.4e-6 relative), so depth ops are held to the width ops' bound: a block that is not
    # the identity moves the logits by O(1).
    assert np.max(np.abs(got - ref)) <= 2e-6 * np.abs(ref).max() + 1e-5


@pytest.mark.parametrize(
    ("parent_arch", "op_name", "new_path"),
    [(ONE_PATH, "res_path2", 2), (PARENT, "res_path3", 3)],
)
def test_new_path_preserves_logits_and_is_alive(parent_arch, op_name, new_path):
    parent = _trained_like(parent_arch)
    child_arch = parent_arch + EXPANSION_OPS_BY_NAME[op_name]
    assert child_arch.num_paths == parent_arch.num_paths + 1
    assert child_arch.ratios[:-1] == parent_arch.ratios and child_arch.ratios[-1] == 0.125
    child = grow_model(parent, child_arch)
    x = _images()
    assert np.max(np.abs(_logits(child, x) - _logits(parent, x))) <= 1e-5

    # The path computes something: its stage-5 features (fed the old paths by the interactions)
    # are of ordinary size, and its stage-3 output is tiny but not zero (a zero ReLU output
    # would have zero gradient).
    probe = keras.Model(child.input, [
        child.get_layer(f"path{new_path}_stage3_block{child_arch.depth[2]}").output,
        child.get_layer(f"path{new_path}_stage5_block{child_arch.depth[4]}").output,
    ])
    stage3, stage5 = (np.asarray(t) for t in probe(x, training=False))
    assert 0 < np.max(np.abs(stage3)) < 1e-6
    assert np.mean(stage5 > 0) > 0.1


def test_changed_ratio_keeps_every_weight():
    parent = _trained_like(PARENT)
    child_arch = PARENT + EXPANSION_OPS_BY_NAME["res_path1"]
    assert child_arch.ratios == (0.625, 0.25)
    child = grow_model(parent, child_arch)
    compared = 0
    for layer in parent.layers:
        for old, new in zip(layer.weights, child.get_layer(layer.name).weights):
            np.testing.assert_array_equal(new.numpy(), old.numpy(), err_msg=f"{layer.name}/{old.name}")
            compared += 1
    assert compared == len(parent.weights) == len(child.weights)
    # The first path now runs at 5/8 (60 px -> 4 x 4 logits instead of 3 x 3).
    assert child(_images(1), training=False).shape == (1, 4, 4, 3)


def test_growth_in_every_dimension_at_once_and_deploy_form():
    parent = _trained_like(PARENT)
    child_arch = Arch((2, 3, 3, 4, 2), (8, 16, 24, 48, 48), (0.5, 0.25, 0.125), num_classes=3)
    child = grow_model(parent, child_arch)
    x = _images()
    ref = _logits(parent, x)
    assert np.max(np.abs(_logits(child, x) - ref)) <= 1e-5
    # Folding the grown model's branches (zero gammas, the exact identity BN) keeps it equal too.
    deploy = _logits(reparameterize(child), x)
    assert np.max(np.abs(deploy - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))


def test_grown_model_can_learn():
    """Every new weight gets a gradient: at once where the function allows, after one step everywhere."""
    parent = _trained_like(PARENT)
    child_arch = Arch((1, 3, 1, 2, 2), (4, 8, 8, 48, 48), (0.5, 0.25, 0.125), num_classes=3)
    child = grow_model(parent, child_arch)
    x = _images(4)
    labels = np.random.default_rng(5).integers(0, 3, size=(4, 3, 3))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def gradients():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, child(x, training=True))
        grads = tape.gradient(loss, child.trainable_variables)
        return {v.path: np.asarray(g) for v, g in zip(child.trainable_variables, grads)}

    first = gradients()
    # New depth block (stage 2 block 3): its zero BN gammas start learning at once.
    assert np.abs(first["path1_stage2_block3/bn/gamma"]).max() > 1e-6
    # The new path's gated blocks and its head rows, and the head rows of new stage-5 channels.
    assert np.abs(first["path3_stage3_block1/bn/gamma"]).max() > 1e-4
    assert np.abs(first["path3_stage4_block2/bn_1x1/gamma"]).max() > 1e-4
    head = first["head/kernel"]
    assert np.all(np.abs(head[0, 0, 96:]).max(axis=-1) > 0)  # path 3's rows
    assert np.all(np.abs(head[0, 0, 16:48]).max(axis=-1) > 0)  # path 1's new channels

    optimizer = keras.optimizers.SGD(0.01)
    optimizer.apply_gradients(zip([tf.constant(first[v.path]) for v in child.trainable_variables],
                                  child.trainable_variables))
    second = gradients()
    dead = [name for name, g in second.items() if name.startswith("path3_") and not np.any(g)]
    assert not dead, f"new-path weights without gradient after one step: {dead}"
    # The new path's first kernel trains at a useful rate, not gate-sized.
    assert np.abs(second["path3_stage1_block1/conv/kernel"]).max() > 1e-6


@pytest.mark.parametrize(
    ("child", "expected"),
    [
        (Arch((1, 1, 1, 2, 1), (4, 8, 8, 16, 16), (0.5, 0.25), num_classes=3), "depth[1] shrinks 2 -> 1"),
        (Arch((1, 2, 1, 2, 1), (4, 8, 4, 16, 16), (0.5, 0.25), num_classes=3), "width[2] shrinks 8 -> 4"),
        (Arch((1, 2, 1, 2, 1), (4, 8, 8, 16, 16), (0.5,), num_classes=3), "paths 2 -> 1"),
        (Arch((1, 2, 1, 2, 1), (4, 8, 8, 16, 16), (0.5, 0.125), num_classes=3), "path 2 (high to low) shrinks 0.25"),
        (Arch((1, 2, 1, 2, 1), (4, 8, 8, 16, 16), (0.5, 0.25), num_classes=4), "num_classes 3 -> 4"),
        (Arch((1, 2, 1, 2, 1), (4, 8, 8, 16, 48), (0.5, 0.25), num_classes=3), "loses its identity branch"),
    ],
)
def test_unreachable_child_is_rejected(child, expected):
    parent = build_model(PARENT)
    with pytest.raises(ValueError, match="cannot grow") as info:
        grow_model(parent, child)
    message = str(info.value)
    assert PARENT.short() in message and child.short() in message and expected in message


def test_deploy_parent_is_rejected():
    with pytest.raises(ValueError, match="training-form"):
        grow_model(build_model(PARENT, deploy=True), PARENT)
