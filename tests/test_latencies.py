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
    # sigma_rel * the step's largest dL (1.5 ms, the deeper network's): the error on the work the step adds
    assert lat == pytest.approx(1 + 0.5 * 8) and se == pytest.approx(0.1 * 1.5)
    assert out[same.hash] == pytest.approx((3.5, 0.15)) and not math.isnan(out[same.hash][0])
    assert paired.deterministic  # the k rule takes a prediction as exact


def test_on_the_shipped_openvino_profile_step_1_candidates_are_told_from_their_parent():
    """The shipped profile of a 2-core AVX2 EPYC (sigma_rel 12.9 %): from the CamVid recipe's N0, the candidates
    the search proposes are slower than N0 beyond latency_z of their SE, except those predicted to add a small
    share of the step's largest dL (which are "the same latency", as the decision rule means)."""
    from pathlib import Path

    from lps_keras.arch import EXPANSION_OPS
    from lps_keras.recipe import load_recipe
    from lps_keras.search.candidates import propose_candidates

    repo = Path(__file__).resolve().parents[1]
    profile = repo / "profiles" / "epyc_avx2_2core_openvino_fp32_360x480.json"
    recipe = load_recipe(repo / "recipes" / "expand_camvid.json")
    single, paired = latency_functions("openvino", (1, 360, 480, 3), profile=profile)
    n0 = recipe.arch()
    _, cands = propose_candidates(n0, EXPANSION_OPS, single, recipe.search.max_k)
    out = paired(n0, [c.arch for c in cands])
    base = out[n0.hash][0]
    dls = {c.op: out[c.arch.hash][0] - base for c in cands}
    se = {out[c.arch.hash][1] for c in cands}
    assert len(se) == 1 and se.pop() == pytest.approx(sigma_rel(json.loads(profile.read_text())) * max(dls.values()))
    told = [op for op, dl in dls.items() if dl > recipe.search.decision.latency_z * out[cands[0].arch.hash][1]]
    assert all(dl > 0 for dl in dls.values()) and len(told) >= len(cands) - 2, dls
