"""The model under another Keras backend (torch): same weights, same outputs as under TensorFlow.

Under TF the resize lowers to ``ResizeBilinear``; under torch it takes the gather-and-lerp path in
``lps_keras.layers``. Weights saved by the TF backend (``.weights.h5``) are loaded in a torch-backend
subprocess (the backend is fixed per process) and the logits compared.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import randomize_batchnorm

from lps_keras.arch import Arch
from lps_keras.model import build_model
from lps_keras.presets import get_preset

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch not installed (pip install torch) - optional backend")

REPO = Path(__file__).resolve().parents[1]
ARCHS = {
    "tiny": get_preset("lps_tiny", num_classes=5),
    "3path": Arch((1, 1, 2, 2, 1), (4, 4, 8, 8, 12), (0.75, 0.5, 0.25), num_classes=4),
}

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from lps_keras.arch import Arch
    from lps_keras.layers import resize_bilinear
    from lps_keras.model import build_model

    assert keras.backend.backend() == "torch", keras.backend.backend()
    work = sys.argv[1]
    spec = json.load(open(f"{work}/spec.json"))
    data = np.load(f"{work}/inputs.npz")
    out = {"resize": keras.ops.convert_to_numpy(resize_bilinear(keras.ops.convert_to_tensor(data["small"]), (11, 4)))}
    for name, d in spec.items():
        model = build_model(Arch.from_dict(d["arch"]), deploy=d["deploy"])
        model.load_weights(f"{work}/{name}.weights.h5")
        out[name] = keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(data["image"]), training=False))
    np.savez(f"{work}/outputs.npz", **out)
    """
)


def test_torch_backend_matches_tensorflow(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 37, 53, 3)).astype(np.float32)
    small = rng.normal(size=(1, 5, 7, 2)).astype(np.float32)
    spec, want = {}, {}
    for name, arch in ARCHS.items():
        for deploy in (False, True):
            key = f"{name}_{'deploy' if deploy else 'train'}"
            model = build_model(arch, deploy=deploy)
            if not deploy:
                randomize_batchnorm(model, seed=1)
            model.save_weights(str(tmp_path / f"{key}.weights.h5"))
            spec[key] = {"arch": arch.to_dict(), "deploy": deploy}
            want[key] = np.asarray(model(image, training=False))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    np.savez(tmp_path / "inputs.npz", image=image, small=small)

    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "outputs.npz")

    ref = tf.compat.v1.image.resize_bilinear(small, (11, 4), align_corners=True).numpy()
    np.testing.assert_allclose(got["resize"], ref, rtol=1e-5, atol=1e-6)
    for key, expected in want.items():
        assert got[key].shape == expected.shape, key
        rel = np.linalg.norm(got[key] - expected) / np.linalg.norm(expected)
        assert rel <= 1e-4, f"{key}: relative error {rel:.3g}"
        np.testing.assert_allclose(got[key], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=key)
