"""lps_keras.search.latencies: a search on a profile gets predicted latencies and differences that carry the
profile's own error (hand computation)."""

import json
import math

import numpy as np
import pytest

from lps_keras.arch import Arch
from lps_keras.latency.profile import FEATURES, make_profile, sigma_rel
from lps_keras.search.latencies import latency_functions

SHAPE = (1, 64, 128, 3)


def _profile(tmp_path, rows=None):
    coef = np.zeros(len(FEATURES))
    coef[FEATURES.index("const")] = 1.0
    coef[FEATURES.index("layers")] = 0.5  # 0.5 ms per conv layer: the prediction is 1 + 0.5 * layers
    prof = make_profile(coef, "openvino", "fp32", SHAPE, device="CPU:x", measured=True, source="test",
                        residual_sd_rel=0.02)
    if rows is not None:
        prof["validation_rows"] = rows
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    return path


def test_sigma_rel_is_the_rms_relative_error_on_the_held_out_networks(tmp_path):
    rows = [{"measured_ms": 10.0, "predicted_ms": 11.0}, {"measured_ms": 4.0, "predicted_ms": 3.6}]
    prof = json.loads(_profile(tmp_path, rows).read_text())
    assert sigma_rel(prof) == pytest.approx(0.1)  # +10 % and -10 %
    prof.pop("validation_rows")
    assert sigma_rel(prof) == 0.02  # neither held-out networks nor leave-one-out rows: the fit's sd


def test_sigma_rel_of_a_profile_fitted_to_published_numbers_is_its_leave_one_out_error(tmp_path):
    """The paper profile's rows: each published latency and its prediction by a fit on the other rows."""
    prof = json.loads(_profile(tmp_path).read_text())
    prof["rows"] = [{"step": 0, "paper_ms": 2.0, "fit_ms": 2.1, "loo_ms": 2.4},  # +20 %
                    {"step": 1, "paper_ms": 5.0, "fit_ms": 5.0, "loo_ms": 5.0},  # 0
                    {"step": 2, "paper_ms": 10.0, "fit_ms": 9.5, "loo_ms": 9.0}]  # -10 %
    assert sigma_rel(prof) == pytest.approx(math.sqrt((0.2 ** 2 + 0.0 + 0.1 ** 2) / 3))  # not the fit's 0.02


def test_a_profile_gives_predicted_latencies_and_dl_with_the_profile_error(tmp_path):
    rows = [{"measured_ms": 10.0, "predicted_ms": 11.0}, {"measured_ms": 4.0, "predicted_ms": 3.6}]
    single, paired = latency_functions("openvino", SHAPE, profile=_profile(tmp_path, rows))
    parent = Arch((1, 1, 1, 1, 1), (8, 16, 32, 64, 64), (1.0,), num_classes=11)  # 5 conv layers
    deeper = Arch((1, 1, 2, 2, 2), (8, 16, 32, 64, 64), (1.0,), num_classes=11)  # 8
    same = Arch((1, 1, 1, 1, 1), (8, 16, 32, 64, 96), (1.0,), num_classes=11)  # 5: dL = 0
    assert single(parent) == pytest.approx(1 + 0.5 * 5)
    out = paired(parent, [deeper, same])
    assert out[parent.hash] == pytest.approx((3.5, 0.0))
    lat, se = out[deeper.hash]
    assert lat == pytest.approx(1 + 0.5 * 8) and se == pytest.approx(0.1 * 3.5)  # sigma_rel * L_parent
    assert out[same.hash] == pytest.approx((3.5, 0.35)) and not math.isnan(out[same.hash][0])
