import numpy as np
import pytest
from helpers import randomize_batchnorm

from lps_keras.arch import Arch
from lps_keras.layers import RepConvBlock
from lps_keras.model import build_model
from lps_keras.presets import get_preset
from lps_keras.reparam import reparameterize

ARCHS = {
    "tiny": get_preset("lps_tiny"),
    "s": get_preset("lps_s"),
    "three_path": Arch((1, 2, 2, 2, 2), (8, 16, 16, 32, 32), (1, 0.5, 0.25), num_classes=7),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_deploy_equals_training_inference(name):
    model = build_model(ARCHS[name])
    randomize_batchnorm(model, seed=3)
    deploy = reparameterize(model)
    x = np.random.default_rng(0).normal(size=(2, 96, 160, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), np.float64)
    got = np.asarray(deploy(x), np.float64)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-4
    assert deploy.count_params() == ARCHS[name].num_params()


def test_original_untouched_and_deploy_plain():
    model = build_model(ARCHS["tiny"])
    before = [w.copy() for w in model.get_weights()]
    deploy = reparameterize(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    blocks = [layer for layer in deploy.layers if isinstance(layer, RepConvBlock)]
    assert blocks and all(b.deploy and b.bn is None and b.conv.use_bias for b in blocks)
    assert deploy is not model and reparameterize(deploy).count_params() == deploy.count_params()
