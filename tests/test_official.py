"""Official PyTorch state dicts -> Keras deploy model, checked against an independent numpy LPS-Net.

The fixture is a random state dict with the official key names (``netH.stages.3.2.0.weight``,
...), in both the deploy form (conv weight + bias) and the training form (conv + BatchNorm). The
reference forward pass below consumes that dict directly, in NCHW, and follows the official
``lpsnet.py`` control flow: path inputs at ``int(H * r)``, stages of conv(pad 1) [+ BN] + ReLU,
interaction after stages 3 and 4, upsample-and-concat, 1x1 head. It shares no code with
``lps_keras``: convolution by padded strided slices + einsum, BN applied (not folded), and
align-corners bilinear resize from its formula as interpolation matrices.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lps_keras.arch import Arch
from lps_keras.model import build_model
from lps_keras.official import (
    OfficialWeightsError,
    export_official_state_dict,
    keras_block_name,
    load_official_weights,
    official_block_prefix,
    official_key_map,
    save_official_npz,
)

STRIDES = (2, 2, 2, 2, 1)
PREFIXES = {1: ["net"], 2: ["netH", "netL"], 3: ["net1", "net2", "net3"]}
EPS = 1e-5

ARCHS = {
    "1path": Arch((1, 1, 2, 1, 2), (4, 6, 8, 8, 12), (0.5,), num_classes=5),
    "2path": Arch((1, 2, 1, 2, 2), (4, 6, 8, 10, 10), (0.75, 0.25), num_classes=5),
    "3path": Arch((1, 1, 2, 2, 1), (4, 4, 8, 8, 12), (1.0, 0.5, 0.25), num_classes=5),
}


# --------------------------------------------------------------------------- fixture
def make_state_dict(depth, width, num_paths, num_classes, form, seed=0):
    """Random official state dict (numpy) for ``get_lpsnet(depth, width, ...)``."""
    rng = np.random.default_rng(seed)
    sd = {}
    for prefix in PREFIXES[num_paths]:
        c_in = 3
        for s, (d, c) in enumerate(zip(depth, width)):
            for b in range(d):
                cin = c_in if b == 0 else c
                key = f"{prefix}.stages.{s}.{b}"
                sd[f"{key}.0.weight"] = rng.normal(0, np.sqrt(2.0 / (9 * cin)), (c, cin, 3, 3)).astype(np.float32)
                if form == "deploy":
                    sd[f"{key}.0.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
                else:
                    sd[f"{key}.1.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
                    sd[f"{key}.1.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
                    sd[f"{key}.1.running_mean"] = rng.normal(0, 0.2, c).astype(np.float32)
                    sd[f"{key}.1.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
                    sd[f"{key}.1.num_batches_tracked"] = np.array(1234, dtype=np.int64)
            c_in = c
    c_head = width[-1] * num_paths
    sd["head.weight"] = rng.normal(0, np.sqrt(1.0 / c_head), (num_classes, c_head, 1, 1)).astype(np.float32)
    sd["head.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return sd


# --------------------------------------------------------------------------- numpy reference
def ref_conv3x3(x, w, b, stride):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (h + 2 - 3) // stride + 1, (wd + 2 - 3) // stride + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out if b is None else out + b[None, :, None, None]


def interp_matrix(n_in, n_out):
    """Row i: weights of the input samples for output i, align_corners=True."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        f = src - lo
        m[i, lo] += 1 - f
        m[i, hi] += f
    return m


def ref_resize(x, size):
    if x.shape[2:] == tuple(size):
        return x
    mh, mw = interp_matrix(x.shape[2], size[0]), interp_matrix(x.shape[3], size[1])
    return np.einsum("ih,nchw,jw->ncij", mh, x, mw)


def ref_stage(sd, prefix, s, x):
    b = 0
    while f"{prefix}.stages.{s}.{b}.0.weight" in sd:
        key = f"{prefix}.stages.{s}.{b}"
        w = sd[f"{key}.0.weight"].astype(np.float64)
        x = ref_conv3x3(x, w, sd.get(f"{key}.0.bias"), STRIDES[s] if b == 0 else 1)
        if f"{key}.1.running_mean" in sd:
            g, beta = sd[f"{key}.1.weight"], sd[f"{key}.1.bias"]
            mu, var = sd[f"{key}.1.running_mean"], sd[f"{key}.1.running_var"]
            x = (x - mu[None, :, None, None]) / np.sqrt(var[None, :, None, None] + EPS)
            x = x * g[None, :, None, None] + beta[None, :, None, None]
        x = np.maximum(x, 0.0)
        b += 1
    return x


def ref_forward(sd, ratios, image_nchw):
    prefixes = PREFIXES[len(ratios)]
    h, w = image_nchw.shape[2:]
    xs = [ref_resize(image_nchw.astype(np.float64), (int(h * r), int(w * r))) for r in ratios]
    for s in range(5):
        xs = [ref_stage(sd, p, s, x) for p, x in zip(prefixes, xs)]
        if s in (2, 3) and len(xs) > 1:
            xs = [xi + sum(ref_resize(xj, xi.shape[2:]) for j, xj in enumerate(xs) if j != i)
                  for i, xi in enumerate(xs)]
    feat = np.concatenate([xs[0]] + [ref_resize(x, xs[0].shape[2:]) for x in xs[1:]], axis=1)
    return np.einsum("nchw,kc->nkhw", feat, sd["head.weight"][:, :, 0, 0]) + sd["head.bias"][None, :, None, None]


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def deploy_models():
    return {name: build_model(arch, deploy=True) for name, arch in ARCHS.items()}


def image(h=37, w=53, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (1, h, w, 3)).astype(np.float32)


def keras_nchw(model, x_nhwc):
    return np.asarray(model(x_nhwc, training=False)).transpose(0, 3, 1, 2)


def assert_close(out, ref, tol=1e-4):
    assert out.shape == ref.shape
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel <= tol, f"relative error {rel:.3g}"
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())


def sd_for(name, form, seed=0):
    a = ARCHS[name]
    return make_state_dict(a.depth, a.width, a.num_paths, a.num_classes, form, seed)


# --------------------------------------------------------------------------- tests
def test_reference_resize_matches_formula_corners():
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    y = ref_resize(x, (5, 7))
    assert y[0, 0, 0, 0] == 0 and y[0, 0, -1, -1] == 11  # corners align
    assert y[0, 0, 2, 0] == pytest.approx(4.0)  # middle row = input row 1
    assert ref_resize(x, (1, 1))[0, 0, 0, 0] == 0  # out size 1 samples the first pixel


def test_reference_resize_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(1, 2, 9, 13))
    want = torch.nn.functional.interpolate(torch.from_numpy(x), (27, 5), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(ref_resize(x, (27, 5)), want.numpy(), rtol=1e-10, atol=1e-12)


def test_key_mapping():
    assert official_block_prefix(2, 1, 4, 3) == "netH.stages.3.2"
    assert official_block_prefix(2, 2, 1, 1) == "netL.stages.0.0"
    assert official_block_prefix(1, 1, 5, 10) == "net.stages.4.9"
    assert official_block_prefix(3, 3, 2, 1) == "net3.stages.1.0"
    assert keras_block_name("netH.stages.3.2.0.weight") == "path1_stage4_block3"
    assert keras_block_name("net2.stages.0.0.1.running_var") == "path2_stage1_block1"
    assert keras_block_name("net.stages.4.0.0.bias") == "path1_stage5_block1"
    with pytest.raises(ValueError, match="path must be"):
        official_block_prefix(2, 3, 1, 1)


@pytest.mark.parametrize("name", list(ARCHS))
def test_key_map_covers_exactly_the_fixture(deploy_models, name):
    model = deploy_models[name]
    for form in ("deploy", "training"):
        sd = sd_for(name, form)
        want = {k for k in sd if not k.endswith("num_batches_tracked")}
        assert set(official_key_map(model, form)) == want


@pytest.mark.parametrize("form", ["deploy", "training"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_loaded_model_matches_numpy_reference(deploy_models, name, form):
    model = deploy_models[name]
    sd = sd_for(name, form, seed=list(ARCHS).index(name) * 2 + (form == "training"))
    result = load_official_weights(model, sd)
    assert result.form == form and not result.missing_keys and not result.unexpected_keys
    x = image()
    ref = ref_forward(sd, ARCHS[name].ratios, x.transpose(0, 3, 1, 2))
    assert ref.shape[2:] == ARCHS[name].output_size(37, 53)
    assert_close(keras_nchw(model, x), ref)


def test_even_input_and_torch_tensors(deploy_models):
    torch = pytest.importorskip("torch")
    sd = sd_for("2path", "training", seed=5)
    load_official_weights(deploy_models["2path"], {k: torch.from_numpy(v) for k, v in sd.items()})
    x = image(48, 64, seed=3)
    assert_close(keras_nchw(deploy_models["2path"], x), ref_forward(sd, ARCHS["2path"].ratios, x.transpose(0, 3, 1, 2)))


def test_export_round_trip(deploy_models, tmp_path):
    model = deploy_models["3path"]
    sd = sd_for("3path", "deploy", seed=7)
    load_official_weights(model, sd)
    exported = export_official_state_dict(model)
    assert set(exported) == set(sd)
    for k in sd:
        assert exported[k].dtype == np.float32 and exported[k].shape == sd[k].shape
        np.testing.assert_array_equal(exported[k], sd[k])
    fresh = build_model(ARCHS["3path"], deploy=True)
    path = save_official_npz(model, tmp_path / "w.npz")
    load_official_weights(fresh, path)
    x = image(seed=4)
    np.testing.assert_array_equal(keras_nchw(fresh, x), keras_nchw(model, x))


def test_training_form_export_equals_fold(deploy_models):
    model = deploy_models["1path"]
    sd = sd_for("1path", "training", seed=8)
    load_official_weights(model, sd)
    out = export_official_state_dict(model)
    key = "net.stages.2.1"
    scale = sd[f"{key}.1.weight"] / np.sqrt(sd[f"{key}.1.running_var"] + EPS)
    np.testing.assert_allclose(out[f"{key}.0.weight"], sd[f"{key}.0.weight"] * scale[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(
        out[f"{key}.0.bias"], sd[f"{key}.1.bias"] - sd[f"{key}.1.running_mean"] * scale, rtol=1e-5, atol=1e-7
    )


def test_npz_file(deploy_models, tmp_path):
    sd = sd_for("1path", "training", seed=9)
    path = tmp_path / "official.npz"
    np.savez(path, **sd)
    load_official_weights(deploy_models["1path"], str(path))
    x = image(seed=5)
    assert_close(keras_nchw(deploy_models["1path"], x), ref_forward(sd, ARCHS["1path"].ratios, x.transpose(0, 3, 1, 2)))


def test_pth_file_with_wrapper_and_module_prefix(deploy_models, tmp_path):
    torch = pytest.importorskip("torch")
    sd = sd_for("2path", "deploy", seed=10)
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "ckpt.pth"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in sd.items()}}, wrapped)
    model = deploy_models["2path"]
    x = image(seed=6)
    ref = ref_forward(sd, ARCHS["2path"].ratios, x.transpose(0, 3, 1, 2))
    for path in (plain, wrapped):
        load_official_weights(model, sd_for("2path", "deploy", seed=99))  # other weights first
        load_official_weights(model, path)
        assert_close(keras_nchw(model, x), ref)


def test_pth_without_torch_names_pip_install(deploy_models, tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not really a checkpoint")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        load_official_weights(deploy_models["1path"], path)


def test_file_errors(deploy_models, tmp_path):
    with pytest.raises(OfficialWeightsError, match="nope.npz"):  # an LPSError since errors.py (one line, exit 2)
        load_official_weights(deploy_models["1path"], tmp_path / "nope.npz")
    bad = tmp_path / "w.h5"
    bad.write_bytes(b"")
    with pytest.raises(OfficialWeightsError, match=r"unsupported weights file .*w\.h5"):
        load_official_weights(deploy_models["1path"], bad)


def test_training_model_is_rejected():
    model = build_model(ARCHS["1path"], deploy=False)
    with pytest.raises(OfficialWeightsError, match=r"needs a deploy model.*reparameterize"):
        load_official_weights(model, sd_for("1path", "deploy"))
    with pytest.raises(OfficialWeightsError, match="needs a deploy model"):
        export_official_state_dict(model)


def test_missing_key(deploy_models):
    sd = sd_for("2path", "deploy")
    del sd["netL.stages.3.1.0.bias"]
    with pytest.raises(OfficialWeightsError, match=r"1 missing key\(s\): 'netL\.stages\.3\.1\.0\.bias'"):
        load_official_weights(deploy_models["2path"], sd)


def test_unexpected_key_and_non_strict(deploy_models):
    model = deploy_models["2path"]
    sd = sd_for("2path", "deploy", seed=11)
    sd["netH.stages.4.2.0.weight"] = np.zeros((10, 10, 3, 3), np.float32)  # a 3rd block stage 5 lacks
    with pytest.raises(OfficialWeightsError, match=r"unexpected key\(s\): 'netH\.stages\.4\.2\.0\.weight'"):
        load_official_weights(model, sd)
    result = load_official_weights(model, sd, strict=False)
    assert result.unexpected_keys == ("netH.stages.4.2.0.weight",)
    x = image(seed=12)
    del sd["netH.stages.4.2.0.weight"]
    assert_close(keras_nchw(model, x), ref_forward(sd, ARCHS["2path"].ratios, x.transpose(0, 3, 1, 2)))


def test_shape_mismatch_names_key_and_both_shapes(deploy_models):
    sd = sd_for("1path", "deploy")
    sd["head.weight"] = np.zeros((7, 12, 1, 1), np.float32)
    with pytest.raises(OfficialWeightsError, match=r"'head\.weight'.*\[7, 12, 1, 1\].*\[5, 12, 1, 1\]"):
        load_official_weights(deploy_models["1path"], sd)
    sd = sd_for("1path", "training")
    sd["net.stages.1.0.1.running_var"] = np.ones(7, np.float32)
    with pytest.raises(OfficialWeightsError, match=r"'net\.stages\.1\.0\.1\.running_var'.*\[7\].*\[6\]"):
        load_official_weights(deploy_models["1path"], sd)


def test_shape_mismatch_writes_nothing(deploy_models):
    model = deploy_models["1path"]
    before = [np.array(w) for w in model.get_weights()]
    sd = sd_for("1path", "deploy", seed=13)
    sd["net.stages.4.1.0.weight"] = np.zeros((12, 12, 1, 1), np.float32)
    with pytest.raises(OfficialWeightsError, match="shape mismatch"):
        load_official_weights(model, sd)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_wrong_path_count(deploy_models):
    with pytest.raises(OfficialWeightsError, match=r"missing key\(s\): 'net\.stages.*unexpected key\(s\): 'netH"):
        load_official_weights(deploy_models["1path"], sd_for("2path", "deploy"))


def test_mixed_forms_rejected(deploy_models):
    sd = sd_for("1path", "training")
    sd["net.stages.0.0.0.bias"] = np.zeros(4, np.float32)
    with pytest.raises(OfficialWeightsError, match="mixes the training form"):
        load_official_weights(deploy_models["1path"], sd)


# ----------------------------------------------------------------------------- [faults]: errors name the file
def test_other_architecture_npz_names_the_file(deploy_models, tmp_path):
    # An official .npz of another architecture: the message must say which file is wrong.
    path = tmp_path / "other_arch.npz"
    np.savez(path, **sd_for("1path", "deploy"))
    with pytest.raises(OfficialWeightsError, match=r"other_arch\.npz: official deploy-form state dict does not "
                       r"match model"):
        load_official_weights(deploy_models["2path"], path)
