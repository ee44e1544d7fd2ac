"""The kernel-level latency model: the convs an architecture runs (hand count), the single-conv table's
interpolation against a timing law it reproduces exactly, the whole-network fit recovering known
coefficients, and a ``kernels`` profile through its file and ``predict_latency``."""

import json
import math

import numpy as np
import pytest

from lps_keras.arch import Arch
from lps_keras.latency.kernel_model import (
    FEATURES,
    GRID_CHANNELS,
    ConvTable,
    conv_layers,
    fit_network_model,
    grid_specs,
    kernel_features,
    measure_grid,
)
from lps_keras.latency.profile import load_profile, make_profile, predict_latency
from lps_keras.latency.profile_build import random_walks
from lps_keras.presets import get_preset


def law(spec):
    """A made-up device: 0.02 ms + 1e-6 ms per pixel per (log2 c_in + log2 c_out), stride 2 twice as dear.

    Its intercept and slope are linear in (log2 c_in, log2 c_out): bilinear interpolation is exact."""
    h, w, ci, co, st = spec
    return 0.02 + h * w * 1e-6 * (math.log2(ci) + math.log2(co)) * st


def test_conv_layers_by_hand():
    arch = Arch((1, 1, 2, 1, 1), (4, 8, 16, 32, 32), (1.0, 0.5), num_classes=3)
    convs = conv_layers(arch, 64, 128)
    assert len(convs) == 2 * 6
    # path 1: 64x128 -> 32x64 (3->4, s2), 16x32 (4->8, s2), 8x16 (8->16, s2) twice (16->16, s1), 4x8, 4x8 (s1)
    assert convs[:6] == [(32, 64, 3, 4, 2), (16, 32, 4, 8, 2), (8, 16, 8, 16, 2), (8, 16, 16, 16, 1),
                         (4, 8, 16, 32, 2), (4, 8, 32, 32, 1)]
    assert convs[6] == (16, 32, 3, 4, 2)  # path 2 starts at half the size
    specs = grid_specs()
    assert len(specs) == 2 * (len(GRID_CHANNELS) + (len(GRID_CHANNELS) + 1) * len(GRID_CHANNELS))


def test_the_table_reproduces_a_law_it_can_represent():
    table = ConvTable(measure_grid(law, say=lambda _: None))
    for spec in [(30, 40, 16, 16, 1), (30, 40, 24, 24, 1), (7, 9, 3, 12, 2), (100, 50, 48, 96, 2),
                 (45, 60, 200, 300, 2)]:
        assert table.conv_ms(*spec) == pytest.approx(law(spec), rel=1e-9)
    # beyond the grid: the end point's per-pixel cost scaled by the MAC ratio
    big = (10, 10, 1024, 1024, 1)
    end = (10, 10, 512, 512, 1)
    assert table.conv_ms(*big) == pytest.approx(0.02 + (law(end) - 0.02) * 4, rel=1e-9)
    # stride 1 changing the width (stage 5's first block): priced at the output width times c_in / c_out
    assert table.conv_ms(10, 10, 32, 64, 1) == pytest.approx(0.02 + (law((10, 10, 64, 64, 1)) - 0.02) / 2, rel=1e-9)
    again = ConvTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.conv_ms(30, 40, 24, 24, 1) == pytest.approx(table.conv_ms(30, 40, 24, 24, 1), rel=1e-5)


def test_the_network_fit_recovers_known_coefficients_and_a_profile_predicts_with_them(tmp_path):
    table = ConvTable(measure_grid(law, say=lambda _: None))
    archs = [get_preset(n, num_classes=11) for n in ("lps_tiny", "lps_s", "lps_m", "lps_l")]
    archs += random_walks(12, 0, archs[0])  # 1-10 random expansion steps from N0
    true = np.array([0.9, 0.3, 2.0, 0.01, 0.5])
    x = np.stack([kernel_features(a, 90, 120, table) for a in archs])
    coef, sd = fit_network_model(x, x @ true)
    np.testing.assert_allclose(coef, true, rtol=1e-6)
    assert sd < 1e-9
    prof = make_profile(coef, "openvino", "fp32", (1, 90, 120, 3), device="CPU:test", measured=True, source="test",
                        residual_sd_rel=sd, table=table)
    assert prof["model"]["kind"] == "kernels" and prof["model"]["features"] == list(FEATURES)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    loaded = load_profile(path)
    for a, want in zip(archs, x @ true):
        assert predict_latency(a, loaded) == pytest.approx(want, rel=1e-5)
