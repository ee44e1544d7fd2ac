"""Latency profiles: features, the fit on synthetic timings with a known answer, files, mismatches, the paper's."""

import contextlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from lps_keras.arch import Arch
from lps_keras.latency.profile import (
    FEATURES,
    ProfileError,
    accuracy_figures,
    arch_features,
    fit_linear,
    kendall_tau,
    load_profile,
    make_profile,
    predict_latency,
    profile_latency_fn,
)
from lps_keras.latency.profile_build import fit_profile, leave_one_out, random_walks, table4_archs
from lps_keras.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
N0 = get_preset("lps_tiny", num_classes=11)
SHAPE = (1, 64, 96, 3)


def test_features_by_hand_for_a_one_path_network():
    a = Arch((1, 1, 1, 1, 1), (2, 2, 2, 2, 2), (1.0,), num_classes=3)
    f = dict(zip(FEATURES, arch_features(a, 32, 32)))
    # stage 1: 16x16 out, 9 * 3 * 2 MACs per pixel; stage 2: 8x8, 9 * 2 * 2; ... stage 5 stride 1 at 2x2
    assert f["gmacs_s1"] == pytest.approx(16 * 16 * 9 * 3 * 2 / 1e9)
    assert f["gmacs_s2"] == pytest.approx(8 * 8 * 9 * 2 * 2 / 1e9)
    assert f["gmacs_s5"] == pytest.approx(2 * 2 * 9 * 2 * 2 / 1e9)
    assert f["layers"] == 5 and f["resize_mpix"] == 0 and f["const"] == 1
    assert f["head_gmacs"] == pytest.approx(2 * 2 * 2 * 3 / 1e9)
    assert f["act_mb"] == pytest.approx(4 * (32 * 32 * 3 + 16 * 16 * 2 + 16 * 16 * 2 + 8 * 8 * 2 + 8 * 8 * 2
                                             + 4 * 4 * 2 + 4 * 4 * 2 + 2 * 2 * 2 + 2 * 2 * 2 + 2 * 2 * 2) / 1e6)
    # the total over stages is the Arch's own MAC count
    assert sum(f[k] for k in FEATURES if "gmacs" in k) == pytest.approx(a.macs(32, 32) / 1e9)


def test_nnls_recovers_a_known_nonnegative_model():
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(40), rng.uniform(0, 5, (40, 3))])
    true = np.array([0.5, 2.0, 0.0, 0.3])
    np.testing.assert_allclose(fit_linear(x, x @ true), true, atol=1e-9)
    y = x @ np.array([1.0, -1.0, 2.0, 0.0])  # a negative truth: the fit stays >= 0
    assert (fit_linear(x, y) >= 0).all()


def test_profile_fit_and_prediction_on_synthetic_timings():
    """Timings made by a known linear model over the features: the fit finds it, predictions match."""
    true = np.zeros(len(FEATURES))
    true[FEATURES.index("const")] = 0.3
    true[FEATURES.index("gmacs_s1")] = 40.0
    true[FEATURES.index("gmacs_s4")] = 90.0
    true[FEATURES.index("layers")] = 0.02
    train = random_walks(40, 0, N0)
    held = random_walks(20, 1, N0, exclude=[a.hash for a in train])

    def timing(a):
        return float(arch_features(a, 64, 96) @ true)

    coef, sd = fit_profile(train, [timing(a) for a in train], SHAPE)
    assert sd < 1e-6
    prof = make_profile(coef, "openvino", "fp32", SHAPE, device="CPU:test", measured=True, source="synthetic",
                        residual_sd_rel=sd)
    predicted = [predict_latency(a, prof) for a in held]
    figures = accuracy_figures(predicted, [timing(a) for a in held])
    assert figures["within_10pct"] == 1.0 and figures["kendall_tau"] == pytest.approx(1.0)


def test_profile_file_round_trip_and_mismatches_refused(tmp_path):
    coef = np.zeros(len(FEATURES))
    coef[0] = 1.0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile(coef, "openvino", "fp32", (1, 360, 480, 3), device="CPU:x",
                                            measured=True, source="test", residual_sd_rel=0.05)))
    fn = profile_latency_fn(path, "openvino", (1, 360, 480, 3))
    assert fn(N0) == pytest.approx(1.0) and fn.sigma_rel == 0.05
    with pytest.raises(ProfileError, match=r"p.json: the profile describes the 'openvino' backend.*'tf'"):
        profile_latency_fn(path, "tf", (1, 360, 480, 3))
    with pytest.raises(ProfileError, match=r"made at input \[1, 360, 480, 3\].*\[1, 1024, 2048, 3\]"):
        profile_latency_fn(path, "openvino", (1, 1024, 2048, 3))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="bad.json: not a readable latency profile"):
        load_profile(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(ProfileError, match="not a latency profile"):
        load_profile(tmp_path / "other.json")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "missing.json")


def test_a_profile_measured_with_other_runtime_settings_is_used_with_a_warning(tmp_path, monkeypatch):
    coef = np.zeros(len(FEATURES))
    coef[0] = 1.0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile(coef, "onnxruntime", "fp32", (1, 360, 480, 3), device="CPU:x",
                                            measured=True, source="test", residual_sd_rel=0.05,
                                            versions={"onnxruntime": "1.32.0", "spinning": "on"})))
    monkeypatch.setenv("LPS_ORT_SPINNING", "off")
    with pytest.warns(UserWarning, match=r"p.json: measured with onnxruntime spinning='on' \(here 'off'\)"):
        fn = profile_latency_fn(path, "onnxruntime", (1, 360, 480, 3))
    assert fn(N0) == pytest.approx(1.0)  # warned of, not refused
    monkeypatch.setenv("LPS_ORT_SPINNING", "on")  # the same setting: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile_latency_fn(path, "onnxruntime", (1, 360, 480, 3))
        monkeypatch.setenv("LPS_ORT_SPINNING", "off")
        # a profile that does not record the setting is not compared
        path.write_text(json.dumps({**json.loads(path.read_text()), "versions": {"onnxruntime": "1.32.0"}}))
        profile_latency_fn(path, "onnxruntime", (1, 360, 480, 3))


def test_the_shipped_epyc_onnxruntime_profile_records_thread_spinning_on():
    prof = load_profile(REPO / "profiles" / "epyc_avx2_2core_onnxruntime_fp32_360x480.json")
    assert prof["versions"]["spinning"] == "on" and "before LPS_ORT_SPINNING existed" in prof["settings_note"]
    xeon = load_profile(REPO / "profiles" / "xeon_amx_2core_onnxruntime_fp32_360x480.json")
    assert xeon["versions"]["spinning"] == "off"  # recorded by its measurement


def test_kendall_tau_by_hand():
    # equal infinities (slopes of candidates not slower than the parent) are a tie, not NaN
    assert kendall_tau([np.inf, np.inf, 1], [3, 3, 1]) == pytest.approx(1.0)
    assert kendall_tau([np.inf, 1, -np.inf], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, np.nan, 2], [1, 2, 3]))
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


# The paper's Table 4 latencies (ms, TensorRT FP32, GTX 1070Ti, 1024x2048), typed from the paper by hand.
TABLE4_MS = [0.38, 0.49, 0.63, 0.98, 1.25, 1.80, 2.53, 3.37, 5.17, 7.07, 9.52, 12.38, 17.81, 25.14, 31.18]


def test_table4_rows_come_with_the_package_and_a_given_file_overrides_them(tmp_path):
    archs, ms, miou = table4_archs()  # no file: the rows packaged in lps_keras/presets.json
    assert ms == TABLE4_MS and len(archs) == len(miou) == 15
    assert archs[0] == Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,), num_classes=19)
    assert archs[14] == Arch((1, 3, 3, 10, 10), (8, 32, 96, 224, 224), (11 / 8, 0.25), num_classes=19)
    given = tmp_path / "t4.json"
    given.write_text(json.dumps({"columns": ["step", "depth", "width", "resolution", "latency_ms", "miou"],
                                 "rows": [[0, [1, 1, 1, 1, 1], [4, 8, 8, 8, 8], ["1/2", 0, 0], 2.5, 30.0]]}))
    archs, ms, miou = table4_archs(given, num_classes=11)
    assert archs == [Arch((1, 1, 1, 1, 1), (4, 8, 8, 8, 8), (0.5,), num_classes=11)] and ms == [2.5]
    with pytest.raises(ProfileError, match=r"missing.json: Table 4 JSON not found"):
        table4_archs(tmp_path / "missing.json")


def test_a_missing_table4_file_stops_the_profile_cli_before_timing(tmp_path, capsys):
    from lps_keras.latency.profile import main

    out = tmp_path / "p.json"
    assert main(["--backend", "openvino", "--table4", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.json: Table 4 JSON not found" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_the_shipped_paper_profile_is_fitted_to_table4_and_says_so():
    prof = load_profile(REPO / "profiles" / "gtx1070ti_tensorrt_fp32_paper.json")
    assert prof["measured"] is False and "NOT MEASURED" in prof["source"]
    assert prof["backend"] == "tensorrt" and prof["input_shape"] == [1, 1024, 2048, 3]
    assert prof["leave_one_out"]["n"] == 15
    archs, ms, _ = table4_archs()
    fitted = [predict_latency(a, prof) for a in archs]
    assert kendall_tau(fitted, ms) == pytest.approx(1.0)  # the paper's order is kept
    loo = leave_one_out(archs, ms, (1, 1024, 2048, 3), ("const", "gmacs", "act_mb"))
    assert accuracy_figures(loo, ms)["median_abs_rel_error"] == pytest.approx(
        prof["leave_one_out"]["median_abs_rel_error"])


def test_the_paper_profile_is_regenerated_by_the_cli(tmp_path, capsys):
    from lps_keras.latency.profile import main, sigma_rel

    shipped = json.loads((REPO / "profiles" / "gtx1070ti_tensorrt_fp32_paper.json").read_text())
    out = tmp_path / "paper.json"
    assert main(["--paper", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    np.testing.assert_allclose(again["model"]["coef"], shipped["model"]["coef"], rtol=1e-9, atol=1e-12)
    assert again["model"]["features"] == shipped["model"]["features"]
    assert again["leave_one_out"] == pytest.approx(shipped["leave_one_out"], rel=1e-9)
    assert [r["loo_ms"] for r in again["rows"]] == pytest.approx([r["loo_ms"] for r in shipped["rows"]], abs=1e-9)
    assert [r["paper_ms"] for r in again["rows"]] == TABLE4_MS
    assert sigma_rel(again) == pytest.approx(sigma_rel(shipped), rel=1e-9)
    assert again["residual_sd_rel"] == pytest.approx(shipped["residual_sd_rel"], rel=1e-9)
    assert "NOT MEASURED" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # --paper measures nothing: a backend with it is a usage error
        main(["--paper", "--backend", "tf", "--out", str(out)])


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "litert", "tf"])
def test_the_shipped_cpu_profiles_drive_a_search_on_a_fresh_clone(backend, monkeypatch):
    monkeypatch.setenv("LPS_ORT_SPINNING", "on")  # as the EPYC onnxruntime profile was measured (else a warning)
    path = REPO / "profiles" / f"epyc_avx2_2core_{backend}_fp32_360x480.json"
    # the tf profile was measured with TensorFlow's default oneDNN setting; a test process that turned it off
    # gets the settings warning, which is the point of it
    onednn_off = backend == "tf" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0"
    with (pytest.warns(UserWarning, match="measured with tf onednn='default' \\(here 'off'\\)") if onednn_off
          else contextlib.nullcontext()):
        fn = profile_latency_fn(path, backend, (1, 360, 480, 3))
    prof = fn.profile
    assert prof["measured"] is True and prof["validation"]["n"] >= 30 and "avx2" in prof["cpu_flags"]
    assert 0 < fn(N0) < fn(get_preset("lps_s", num_classes=11)) < fn(get_preset("lps_l", num_classes=11))
    # the stored validation is what the file's own model predicts for its rows
    for row in prof["validation_rows"][:5]:
        assert predict_latency(Arch.from_dict(row["arch"]), prof) == pytest.approx(row["predicted_ms"], rel=1e-3)
    other = "litert" if backend != "litert" else "tf"
    with pytest.raises(ProfileError, match=repr(other)):
        profile_latency_fn(path, other, (1, 360, 480, 3))


def _conv_law(spec):
    """A made-up device for the single-conv table: 0.02 ms + 2e-6 ms per pixel per log2 channel, stride 2 dearer."""
    h, w, ci, co, st = spec
    return 0.02 + h * w * 2e-6 * (np.log2(ci) + np.log2(co)) * st


def _synthetic(kind):
    """Training and held-out networks timed by a known model of ``kind`` (nonnegative coefficients)."""
    from lps_keras.latency.kernel_model import ConvTable, kernel_features, measure_grid

    table = ConvTable(measure_grid(_conv_law, say=lambda _: None))
    train = [N0, *random_walks(30, 0, N0)]
    held = random_walks(15, 1, N0, exclude=[a.hash for a in train])
    if kind == "kernels":
        true = np.array([1.3, 0.4, 0.0, 0.015, 0.2])

        def timing(a):
            return float(kernel_features(a, 64, 96, table) @ true)
    else:
        true = np.zeros(len(FEATURES))
        true[[FEATURES.index("const"), FEATURES.index("gmacs_s2"), FEATURES.index("act_mb")]] = (0.4, 60.0, 0.3)

        def timing(a):
            return float(arch_features(a, 64, 96) @ true)
    return table, [(a, timing(a)) for a in train], [("held-out walk", a, timing(a)) for a in held]


@pytest.mark.parametrize("kind", ["linear", "kernels"])
def test_auto_keeps_the_model_that_made_the_timings_and_validates_it(kind):
    from lps_keras.latency.profile_build import choose_model, finish_profile

    table, train, held = _synthetic(kind)
    chosen, loo = choose_model("auto", [a for a, _ in train], [m for _, m in train], SHAPE, table)
    assert chosen == kind and set(loo) == {"linear", "kernels"} and loo[kind] < 1e-6 < loo[({"linear", "kernels"}
                                                                                           - {kind}).pop()]
    prof = finish_profile("auto", table, train, held, {"n": 0}, backend="openvino", precision="fp32",
                          input_shape=SHAPE, device="CPU:test", source="synthetic")
    assert prof["model"]["kind"] == kind and prof["model_selection"]["chosen"] == kind
    assert prof["validation"]["within_10pct"] == 1.0 and prof["validation"]["n"] == len(held)
    assert ("conv_table" in prof) == (kind == "linear")  # kept for a later refit when not in the model


def test_refit_changes_the_model_from_stored_timings_without_measuring(tmp_path):
    from lps_keras.latency.profile_build import finish_profile, refit_profile

    table, train, held = _synthetic("kernels")
    prof = finish_profile("linear", table, train, held, {"n": 0}, backend="openvino", precision="fp32",
                          input_shape=SHAPE, device="CPU:test", source="synthetic", minutes=1.0)
    assert prof["model"]["kind"] == "linear" and prof["validation"]["median_abs_rel_error"] > 1e-3
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    again = refit_profile(path, "auto")
    assert again["model"]["kind"] == "kernels" and again["validation"]["median_abs_rel_error"] < 1e-6
    assert [r["measured_ms"] for r in again["validation_rows"]] == [r["measured_ms"] for r in prof["validation_rows"]]
    assert again["minutes"] == 1.0 and "refitted (auto)" in again["source"]
    for row in again["validation_rows"]:  # the refitted file predicts its own rows
        assert predict_latency(Arch.from_dict(row["arch"]), again) == pytest.approx(row["predicted_ms"], rel=1e-3)
    no_table = {**prof, "conv_table": None}
    path.write_text(json.dumps(no_table))
    with pytest.raises(ValueError, match="single-conv table"):
        refit_profile(path, "kernels")


_WITHOUT_TF = """
import sys


class Blocker:  # tensorflow and keras unimportable, as on a machine without them
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError(f"blocked: {name}")


sys.meta_path.insert(0, Blocker())
try:
    import tensorflow  # noqa: F401
    raise SystemExit("the blocker let tensorflow in")
except ImportError:
    pass
from lps_keras.latency import predict_latency
from lps_keras.presets import get_preset

n0 = get_preset("lps_tiny", num_classes=11)
print(" ".join(repr(predict_latency(n0, path)) for path in sys.argv[1:]))
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
"""


def test_predict_latency_runs_without_tensorflow(tmp_path):
    import os
    import subprocess
    import sys

    from lps_keras.latency.profile_build import finish_profile

    table, train, held = _synthetic("kernels")
    kernels = tmp_path / "kernels.json"
    kernels.write_text(json.dumps(finish_profile("kernels", table, train, held, {"n": 0}, backend="openvino",
                                                 precision="fp32", input_shape=SHAPE, device="CPU:test",
                                                 source="synthetic")))
    linear = REPO / "profiles" / "epyc_avx2_2core_openvino_fp32_360x480.json"
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TF, str(linear), str(kernels)], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr
    got = [float(v) for v in done.stdout.split()]
    assert got == pytest.approx([predict_latency(N0, linear), predict_latency(N0, kernels)], rel=1e-12)


def test_predict_latency_and_measure_set_are_importable_from_the_package():
    import lps_keras.latency as latency

    assert latency.predict_latency is predict_latency and latency.load_profile is load_profile
    assert callable(latency.measure_set)
