"""benchmarks/train_step_torch.py, the PyTorch reference of the training step: the same network as
lps_keras's training form (trainable parameters equal, per preset), and its step runs."""

from pathlib import Path

import numpy as np
import pytest
from helpers import load_benchmark

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("train_step_torch")


@pytest.mark.parametrize("preset", ["lps_tiny", "lps_s"])
def test_the_reference_has_the_training_forms_parameters(preset):
    from lps_keras.model import build_model
    from lps_keras.presets import get_preset

    arch = get_preset(preset, num_classes=19)
    keras_count = sum(int(np.prod(v.shape)) for v in build_model(arch).trainable_variables)
    assert sum(p.numel() for p in _module().build(arch).parameters()) == keras_count


def test_the_reference_step_runs(tmp_path):
    out = tmp_path / "r.json"
    assert _module().main(["--preset", "lps_tiny", "--input-size", "64x64", "--batch", "2", "--steps", "1",
                           "--warmup", "0", "--output", str(out)]) == 0
    assert out.is_file()
