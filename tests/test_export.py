"""Export: SavedModel round trip in a TensorFlow-only process, static shape, atomic writes, ONNX, bf16, CLIs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import randomize_batchnorm, savedmodel_constants
from PIL import Image

from lps_keras import export as ex
from lps_keras.arch import Arch
from lps_keras.model import build_model
from lps_keras.reparam import reparameterize

REPO = Path(__file__).resolve().parents[1]
# Two paths so the graph has align-corners resizes between paths and on the logits.
ARCH = Arch((1, 1, 1, 1, 1), (4, 8, 8, 16, 16), (1, 0.5, 0), num_classes=5)
H, W = 48, 96


@pytest.fixture(scope="module")
def models():
    train = build_model(ARCH)
    randomize_batchnorm(train, seed=1)
    return train, reparameterize(train)


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    train, deploy = models
    base = tmp_path_factory.mktemp("sm") / "tiny"
    result = ex.export_savedmodel(deploy, base, 1, reference_model=train, verify_image=ex.sample_image(H, W))
    return base, result


def test_resize_reference_matches_torch_align_corners_formula():
    x = np.arange(2 * 3, dtype=np.float64).reshape(1, 2, 3, 1)
    y = ex.resize_bilinear_np(x, 3, 5)
    # Corners coincide; the middle row is the mean of the two input rows.
    assert y[0, 0, 0, 0] == 0 and y[0, -1, -1, 0] == 5
    np.testing.assert_allclose(y[0, 1, :, 0], [1.5, 2.0, 2.5, 3.0, 3.5])


def test_export_layout_and_verification(exported):
    base, result = exported
    version = base / "1"
    assert result.path == version
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    sigs = (version / "signatures.txt").read_text()
    assert "signature_def['serving_default']" in sigs and "signature_def['serve_bytes']" in sigs
    assert "DT_UINT8" in sigs and "DT_STRING" in sigs
    report = result.verification
    assert report["lps_keras_imported"] is False
    assert set(report["signatures"]) >= {"serving_default", "serve_bytes"}
    for sig in ("serving_default", "serve_bytes"):
        assert report[sig]["max_rel_error"] <= 1e-4
    # No staging directories are left beside the version.
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_fresh_process_without_project_imports(exported, models, tmp_path):
    """TF Serving's view: only TensorFlow, both signatures, outputs against an independent numpy reference."""
    base, _ = exported
    train, _ = models
    image = ex.sample_image(H, W, seed=3)
    np.save(tmp_path / "img.npy", image[None])
    Image.fromarray(image).save(tmp_path / "img.png")
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        import tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        img = np.load(sys.argv[2])
        a = m.signatures["serving_default"](images=tf.constant(img))
        b = m.signatures["serve_bytes"](image_bytes=tf.constant([open(sys.argv[3], "rb").read()] * 2))
        np.savez(sys.argv[4], labels=a["labels"].numpy(), probs=a["probabilities"].numpy(),
                 blabels=b["labels"].numpy(), bprobs=b["probabilities"].numpy())
        print(json.dumps(sorted(m.signatures.keys())))
        print(json.dumps(any(k.startswith("lps_keras") for k in sys.modules)))
    """)
    (tmp_path / "s.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "s.py", str(base / "1"), "img.npy", "img.png", "out.npz"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == ["network_logits", "serve_bytes", "serving_default"]  # + predict.py's
    assert json.loads(lines[-1]) is False
    out = np.load(tmp_path / "out.npz")
    # Independent reference: numpy normalisation, Keras training-form model, numpy resize and softmax.
    x = (image[None] / 255.0 - np.array(ex.IMAGENET_MEAN)) / np.array(ex.IMAGENET_STD)
    logits = ex.resize_bilinear_np(np.asarray(train(x.astype(np.float32), training=False)), H, W)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert out["labels"].shape == (1, H, W) and out["labels"].dtype == np.int32
    assert out["probs"].shape == (1, H, W, ARCH.num_classes)
    np.testing.assert_allclose(out["probs"], probs, atol=1e-4)
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, atol=1e-5)
    top2 = np.sort(logits, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-3
    assert (out["labels"] == logits.argmax(-1))[clear].all()
    assert out["blabels"].shape == (2, H, W)
    np.testing.assert_array_equal(out["blabels"][0], out["labels"][0])
    np.testing.assert_allclose(out["bprobs"][1], out["probs"][0], atol=1e-6)


def test_refuses_overwrite_and_failed_export_leaves_nothing(exported, models):
    base, _ = exported
    _, deploy = models
    before = (base / "1" / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists"):
        ex.export_savedmodel(deploy, base, 1)
    assert (base / "1" / "saved_model.pb").stat().st_mtime_ns == before
    # A wrong reference makes verification fail: version 2 must not appear, no staging left.
    other = build_model(ARCH, deploy=True)
    with pytest.raises(ex.ExportError, match="verification"):
        ex.export_savedmodel(deploy, base, 2, reference_model=other, verify_image=ex.sample_image(H, W))
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_bad_arguments(models, tmp_path):
    _, deploy = models
    with pytest.raises(ValueError, match="outputs"):
        ex.export_savedmodel(deploy, tmp_path, 1, outputs="softmax")
    with pytest.raises(ValueError, match="version"):
        ex.export_savedmodel(deploy, tmp_path, 0)
    with pytest.raises(ValueError, match="num_classes"):
        ex.export_savedmodel(deploy, tmp_path, 1, num_classes=19)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        ex.parse_size("1024by2048")
    assert ex.parse_size("1024x2048") == (1024, 2048)


def test_models_config_and_commands(tmp_path):
    path = ex.write_models_config(tmp_path / "lps_s", "lps_s")
    text = path.read_text()
    assert 'name: "lps_s"' in text and f'base_path: "{(tmp_path / "lps_s").resolve()}"' in text
    assert 'model_platform: "tensorflow"' in text and text.count("{") == text.count("}") == 2
    cmds = ex.serving_commands(tmp_path / "lps_s", "lps_s")
    assert "--model_config_file=" in cmds["tensorflow_model_server"]
    assert "-p 8501:8501" in cmds["docker"] and "tensorflow/serving" in cmds["docker"]
    assert "MODEL_NAME=lps_s" in cmds["docker"]
    assert "TF_ENABLE_ONEDNN_OPTS=1" in cmds["docker"] and "TF_ENABLE_ONEDNN_OPTS=1" in cmds["tensorflow_model_server"]
    plain = ex.serving_commands(tmp_path / "lps_s", "lps_s", onednn=False)
    assert "ONEDNN" not in plain["docker"] + plain["tensorflow_model_server"]
    assert '"signature_name": "serve_bytes"' in cmds["curl"] and '"b64"' in cmds["curl"]
    assert "/v1/models/lps_s:predict" in cmds["curl"]


def test_tftrt_unavailable_names_requirements(tmp_path):
    available, reason = ex.tftrt_status()
    if available:
        pytest.skip("TF-TRT is available here")
    with pytest.raises(ex.BackendUnavailable, match="requirements-tftrt.txt"):
        ex.convert_tftrt(tmp_path / "in", tmp_path / "out", "fp16", (1, H, W, 3))
    assert not (tmp_path / "out").exists()


def test_tensorrt_unavailable_names_requirements(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    with pytest.raises(ex.BackendUnavailable, match="requirements-tensorrt.txt"):
        ex.build_tensorrt_engine(tmp_path / "m.onnx", tmp_path / "m.engine", "fp16")


def test_onnx_resize_align_corners_and_parity(models, tmp_path):
    import onnx

    _, deploy = models
    report = ex.export_onnx(deploy, tmp_path / "m.onnx", opset=17, input_shape=(1, H, W, 3))
    assert report["onnxruntime_max_rel_error"] <= 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx"))
    modes = ex.onnx_resize_modes(graph)
    # path 2 input, two interactions (one per direction is a resize only downwards/upwards), upsample
    assert len(modes) >= 2 and set(modes) == {"align_corners"}
    resize_nodes = [n for n in graph.graph.node if n.op_type == "Resize"]
    for node in resize_nodes:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["mode"].s == b"linear"
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="opset"):
        ex.export_onnx(deploy, tmp_path / "x.onnx", opset=11)


def test_onnx_sizes_that_float32_scales_would_round_down(tmp_path):
    """LPS-S-like paths (3/4, 1/4) at CamVid's 360x480: 12 -> 34 is scale 2.8333333, and floor(12 * s) = 33."""
    import onnx

    from lps_keras.arch import Arch
    from lps_keras.model import build_model

    arch = Arch((1, 1, 1, 1, 1), (4, 4, 8, 8, 8), (0.75, 0.25), num_classes=3)
    deploy = build_model(arch, deploy=True)
    report = ex.export_onnx(deploy, tmp_path / "m.onnx", opset=17, input_shape=(1, 360, 480, 3))
    assert report["onnxruntime_max_rel_error"] <= 1e-4 and report["resizes_given_sizes"] >= 3
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    sizes = sorted(tuple(consts[n.input[3]][2:].tolist()) for n in graph.node
                   if n.op_type == "Resize" and len(n.input) == 4)
    # Path 1 input int(360 * 3/4) x int(480 * 3/4) = 270x360 -> 135x180 -> 68x90 -> 34x45 (stage 3) -> 17x23
    # (stages 4, 5); path 2: 90x120 -> 45x60 -> 23x30 -> 12x15 (stage 3) -> 6x8. Interactions resize between
    # 34x45 and 12x15, then 17x23 and 6x8; the concat brings 6x8 up to 17x23.
    assert (34, 45) in sizes and (17, 23) in sizes and (270, 360) in sizes and (12, 15) in sizes


def test_bf16_parity_report(models):
    _, deploy = models
    report = ex.bf16_parity(deploy, ex.sample_image(H, W))
    assert 0.9 <= report["label_agreement"] <= 1.0
    assert 0 < report["logits_max_rel_error"] < 0.1  # bf16 has 8 mantissa bits: not exact, but close
    assert report["logits_mean_rel_error"] <= report["logits_max_rel_error"]


def _cli(args, cwd=REPO, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _own_lines(stderr):
    """stderr without TensorFlow's C++ start-up log (absl lines), which depends on the environment."""
    return [ln for ln in stderr.splitlines()
            if ln and not ln.startswith(("WARNING: All log messages before absl", "I0000 ", "W0000 ", "E0000 "))]


def test_export_cli_static_logits(tmp_path):
    out = tmp_path / "tiny"
    proc = _cli(["export.py", "--recipe", "recipes/lps_tiny.json", "--output", str(out), "--version", "3",
                 "--input-size", f"{H}x{W}", "--outputs", "logits", "--set", "model.num_classes=4",
                 "--graph-weights", "variables"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RANDOMLY INITIALISED" in proc.stderr
    assert "verified in a fresh TensorFlow-only process" in proc.stdout
    assert "tensorflow_model_server" in proc.stdout and "docker run" in proc.stdout and "curl" in proc.stdout
    assert "TF_ENABLE_ONEDNN_OPTS" not in proc.stdout  # a variables graph would get oneDNN's slow kernel
    sigs = (out / "3" / "signatures.txt").read_text()
    assert f"shape: (-1, {H}, {W}, 3)" in sigs and "outputs['logits']" in sigs
    assert f"shape: (-1, {H}, {W}, 4)" in sigs
    assert (out / "models.config").is_file()
    meta = json.loads((out / "3" / "assets.extra" / "lps_keras_export.json").read_text())
    assert meta["input_size"] == [H, W] and meta["outputs"] == "logits" and meta["graph_weights"] == "variables"
    # Same version again: refused, exit non-zero, the existing export untouched.
    again = _cli(["export.py", "--recipe", "recipes/lps_tiny.json", "--output", str(out), "--version", "3"])
    assert again.returncode != 0 and "already exists" in again.stderr
    assert len(_own_lines(again.stderr)) <= 3, again.stderr


@pytest.mark.parametrize("args, message", [
    (["--recipe", "recipes/nope.json"], "recipe file not found"),
    (["--recipe", "recipes/lps_tiny.json", "--input-size", "64y128"], "HEIGHTxWIDTH"),
    (["--recipe", "recipes/lps_tiny.json", "--weights", "missing.keras"], "missing.keras"),
    (["--recipe", "recipes/lps_tiny.json", "--set", "export.outputs=softmax"], "export.outputs"),
    (["--recipe", "recipes/lps_tiny.json", "--set", 'export.graph_weights="frozen"'], "export.graph_weights"),
    (["--recipe", "recipes/lps_tiny.json", "--input-size", "64x128", "--tftrt", "fp16"], "requirements-tftrt.txt"),
])
def test_export_cli_bad_input(tmp_path, args, message):
    proc = _cli(["export.py", *args, "--output", str(tmp_path / "m")])
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / "1").exists()


def test_export_cli_keras_weights_detects_training_form(models, tmp_path):
    train, _ = models
    weights = tmp_path / "train.keras"
    train.save(weights)
    reference, deploy = ex.prepare_deploy_model(ARCH, weights)
    assert not ex.is_deploy(reference) and ex.is_deploy(deploy)
    x = np.random.default_rng(0).normal(size=(1, H, W, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(deploy(x)), np.asarray(train(x)), atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        ex.prepare_deploy_model(Arch((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5,), 5), weights)


def test_predict_cli(exported, tmp_path):
    base, _ = exported
    img = tmp_path / "street.png"
    Image.fromarray(ex.sample_image(40, 72)).save(img)
    proc = _cli(["predict.py", str(img), "--model", str(base / "1"), "--output", str(tmp_path / "pred")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = np.asarray(Image.open(tmp_path / "pred" / "street_mask.png"))
    over = np.asarray(Image.open(tmp_path / "pred" / "street_overlay.png"))
    assert mask.shape == (40, 72, 3)
    # the overlay has the legend strip below the image; --no-legend leaves it out
    assert over.shape[0] > 40 and over.shape[1:] == (72, 3)
    plain = _cli(["predict.py", str(img), "--model", str(base / "1"), "--output", str(tmp_path / "plain"),
                  "--no-legend"])
    assert plain.returncode == 0 and np.asarray(Image.open(tmp_path / "plain" / "street_overlay.png")).shape == (
        40, 72, 3)
    # 5 classes -> generic palette: every mask colour is a palette colour.
    from lps_keras.viz import get_palette

    palette = {tuple(c) for c in get_palette(None, 5)}
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= palette
    bad = _cli(["predict.py", str(tmp_path / "nope.jpg"), "--model", str(base / "1")])
    assert bad.returncode != 0 and "nope.jpg" in bad.stderr and "Traceback" not in bad.stderr


def test_bf16_export_verified(models, tmp_path):
    _, deploy = models
    result = ex.export_savedmodel(deploy, tmp_path / "bf16", 1, precision="bf16", input_size=(H, W),
                                  verify_image=ex.sample_image(H, W))
    report = result.verification
    assert report["precision"] == "bf16"
    assert report["serving_default"]["label_agreement"] >= 0.9
    assert report["serving_default"]["label_mismatches"] == report["serving_default"]["mismatches_at_ties"]
    assert report["serve_bytes"]["max_rel_error"] <= 5e-2
    sigs = (result.path / "signatures.txt").read_text()
    assert "DT_FLOAT" in sigs  # outputs stay float32 for clients


@pytest.fixture(scope="module")
def exported_variables(models, tmp_path_factory):
    """The same network exported with ``graph_weights="variables"`` (the form before constants became the default)."""
    _, deploy = models
    base = tmp_path_factory.mktemp("smv") / "tiny"
    return base, ex.export_savedmodel(deploy, base, 1, verify=False, graph_weights="variables")


def test_savedmodel_with_variables_stores_each_weight_once(exported_variables):
    import tensorflow as tf

    base, _ = exported_variables
    reader = tf.train.load_checkpoint(str(base / "1" / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    stored = sum(int(np.prod(s)) for k, s in shapes.items() if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored == ARCH.num_params()  # Keras 3.15's ExportArchive alone would store 2x (see lps_keras.compat)


def test_default_savedmodel_holds_each_weight_once_as_a_graph_constant(exported, exported_variables, models):
    import tensorflow as tf

    from lps_keras.export.serving import NETWORK_LOGITS_SIGNATURE

    base, _ = exported
    meta = json.loads((base / "1" / "assets.extra" / "lps_keras_export.json").read_text())
    assert meta["graph_weights"] == "constants"
    reader = tf.train.load_checkpoint(str(base / "1" / "variables" / "variables"))
    assert all(k == "_CHECKPOINTABLE_OBJECT_GRAPH" for k in reader.get_variable_to_shape_map())  # no variables
    consts = savedmodel_constants(base / "1")
    assert sum(v.size for v in consts) == ARCH.num_params()  # three endpoints share one network function
    def key(a):  # order-free pairing: size, shape, then the bytes themselves
        return a.size, a.shape, a.tobytes()

    weights = sorted((np.asarray(w) for w in models[1].weights if np.asarray(w).size > 3), key=key)
    stored = sorted(consts, key=key)
    assert len(weights) == len(stored) and all(np.array_equal(a, b) for a, b in zip(weights, stored))
    # Same outputs as the variables form, signature by signature (issue 24: parity with today's graph).
    image = ex.sample_image(H, W)[None]
    const_fn = tf.saved_model.load(str(base / "1"))
    var_fn = tf.saved_model.load(str(exported_variables[0] / "1"))
    for sig in ("serving_default", NETWORK_LOGITS_SIGNATURE):
        a = const_fn.signatures[sig](images=tf.constant(image))
        b = var_fn.signatures[sig](images=tf.constant(image))
        for key in b:
            x, y = a[key].numpy(), b[key].numpy()
            if x.dtype.kind == "f":
                assert np.max(np.abs(x - y)) <= 1e-5 * max(1.0, float(np.max(np.abs(y)))), (sig, key)
            else:
                assert np.array_equal(x, y), (sig, key)


# ----------------------------------------------------------------------------- [faults]: export / predict side
def test_predict_labels_from_network_logits_equal_serving_default(exported, tmp_path):
    # predict.py's bounded-memory path (network logits upsampled and argmaxed in row bands) gives the
    # labels serving_default (full-size softmax) gives, on sizes that do and do not divide evenly.
    import tensorflow as tf

    from lps_keras.export.predict import labels_from_logits

    base, _ = exported
    loaded = tf.saved_model.load(str(base / "1"))
    for h, w, band in ((40, 72, 64), (37, 61, 5), (H, W, 1)):
        image = ex.sample_image(h, w, seed=h)[None]
        want = loaded.signatures["serving_default"](images=tf.constant(image))["labels"][0].numpy()
        logits = loaded.signatures["network_logits"](images=tf.constant(image))["logits"][0].numpy()
        assert logits.shape[:2] != (h, w)  # really the low-resolution logits
        np.testing.assert_array_equal(labels_from_logits(logits, h, w, band_rows=band), want)


def test_predict_same_stem_in_two_directories_and_a_directory_input(exported, tmp_path):
    from lps_keras.errors import UsageError
    from lps_keras.export.predict import output_names, predict_images

    base, _ = exported
    for i, sub in enumerate(("a", "b")):
        (tmp_path / sub).mkdir()
        Image.fromarray(ex.sample_image(24, 40, seed=i)).save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    written = predict_images(base / "1", [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], out, log=lambda m: None)
    assert sorted(p.name for p in written) == ["a_x_mask.png", "a_x_overlay.png", "b_x_mask.png", "b_x_overlay.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # nothing replaced
    assert output_names([Path("d/x.png"), Path("d/x.jpg"), Path("y.png")]) == ["x_png", "x_jpg", "y"]
    # A directory: its image files by name (not the text file); a file given twice is predicted once.
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    Image.fromarray(ex.sample_image(24, 40, seed=5)).save(tmp_path / "a" / "w.png")
    written = predict_images(base / "1", [tmp_path / "a", tmp_path / "a" / "x.png"], tmp_path / "dir",
                             log=lambda m: None)
    assert [p.name for p in written] == ["w_mask.png", "w_overlay.png", "x_mask.png", "x_overlay.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: a directory without image files"):
        predict_images(base / "1", [tmp_path / "empty"], tmp_path / "o2")


def _truncated_copy(exported, tmp_path):
    import shutil

    base, _ = exported  # the variables form: a constants SavedModel has no variables data to truncate
    model = tmp_path / "damaged" / "1"
    shutil.copytree(base / "1", model)
    data = next((model / "variables").glob("variables.data-*"))
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    return model


def test_truncated_variables_are_one_line_naming_the_savedmodel(exported_variables, tmp_path):
    from lps_keras.evaluation import load_for_eval
    from lps_keras.export.predict import predict_images
    from lps_keras.export.serving import SavedModelError
    from lps_keras.recipe import Recipe

    model = _truncated_copy(exported_variables, tmp_path)
    img = tmp_path / "street.png"
    Image.fromarray(ex.sample_image(24, 40)).save(img)
    with pytest.raises(SavedModelError, match=rf"{model}: the SavedModel cannot be loaded: its variables"):
        predict_images(model, [img], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SavedModelError, match=rf"{model}: .*variables .*damaged or truncated"):
        load_for_eval(Recipe(), model)
    proc = _cli(["predict.py", str(img), "--model", str(model), "--output", str(tmp_path / "out")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [ln for ln in _own_lines(proc.stderr)] == [ln for ln in _own_lines(proc.stderr) if str(model) in ln]
    assert len(_own_lines(proc.stderr)) == 1, proc.stderr


def test_truncated_graph_of_a_constants_savedmodel_is_one_line_naming_it(exported, tmp_path):
    import shutil

    from lps_keras.export.serving import SavedModelError, load_savedmodel

    base, _ = exported  # weights as graph constants: saved_model.pb holds them
    model = tmp_path / "damaged" / "1"
    shutil.copytree(base / "1", model)
    pb = model / "saved_model.pb"
    with open(pb, "r+b") as f:
        f.truncate(pb.stat().st_size // 2)
    with pytest.raises(SavedModelError, match=rf"{model}: the SavedModel cannot be loaded: .*damaged"):
        load_savedmodel(model)


def _enospc(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("flavour", ["oserror", "tensorflow"])
def test_export_onto_a_full_disk_leaves_nothing(models, tmp_path, monkeypatch, flavour):
    import keras
    import tensorflow as tf

    from lps_keras.errors import DiskFullError

    def write_out(self, filepath, **kwargs):
        Path(filepath).mkdir(parents=True)
        (Path(filepath) / "saved_model.pb").write_bytes(b"partial")  # some bytes made it before the disk filled
        if flavour == "oserror":
            _enospc()
        # What the SavedModel writer raises: a 51-line ResourceExhaustedError naming errno 28.
        raise tf.errors.ResourceExhaustedError(None, None, "tmp/model/variables: Write failed; errno = 28")

    # ExportArchive() returns a backend subclass: patch the class that really writes.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", write_out)
    base = tmp_path / "full"
    with pytest.raises(DiskFullError, match=rf"{base}: the disk is full .*version 1 was removed"):
        ex.export_savedmodel(models[1], base, 1, verify=False)
    assert list(base.iterdir()) == []  # no version folder, no staging


def test_predict_onto_a_full_disk_leaves_no_partial_png(exported, tmp_path, monkeypatch):
    from lps_keras.errors import DiskFullError
    from lps_keras.export.predict import predict_images

    base, _ = exported
    img = tmp_path / "street.png"
    Image.fromarray(ex.sample_image(24, 40)).save(img)
    out = tmp_path / "out"
    def capped_writer(im, fp, filename, *args):  # a disk that fills after a few bytes
        fp.write(b"\x89PNG\r\n")
        _enospc()

    monkeypatch.setitem(Image.SAVE, "PNG", capped_writer)  # Pillow's PNG writer, looked up by format
    with pytest.raises(DiskFullError, match=rf"{out}: the disk is full .*0 of 1 images"):
        predict_images(base / "1", [img], out, log=lambda m: None)
    assert list(out.iterdir()) == []


def test_verification_child_dies_with_its_parent(tmp_path):
    # export.py killed with -9 during verification: its child must not run on (the child's first lines).
    import signal
    import time

    from lps_keras.export.savedmodel import DIE_WITH_PARENT

    child = DIE_WITH_PARENT + "\nimport time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    parent = textwrap.dedent(f"""
        import os, subprocess, sys
        env = dict(os.environ, LPS_PARENT_PID=str(os.getpid()))
        p = subprocess.Popen([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE, env=env)
        assert p.stdout.readline().strip() == b"ready"
        print(p.pid, flush=True)
        import time; time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for _ in range(50):
            try:
                os.kill(child_pid, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{child_pid}/stat") as f:  # a zombie awaiting its reaper counts as dead
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
            time.sleep(0.1)
        else:
            os.kill(child_pid, signal.SIGKILL)
            pytest.fail("the verification child outlived its parent")
    finally:
        proc.kill()


def test_stale_verification_dirs_of_dead_exports_are_removed(tmp_path):
    # A killed export leaves its verification dir (named with its pid); the next export's clean-up
    # removes it, and leaves a live export's alone.
    from lps_keras import fileio

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / fileio.temp_prefix("lps_verify").replace(str(os.getpid()), str(dead_pid), 1)
    live = tmp_path / (fileio.temp_prefix("lps_verify").replace(str(os.getpid()), str(os.getppid()), 1) + "x")
    for d in (stale, live):
        d.mkdir()
        (d / "image.npy").write_bytes(b"12 MB in real life")
    assert fileio.remove_stale_temps(tmp_path) == [stale]
    assert live.is_dir() and not stale.exists()


def test_verification_files_live_in_the_staging_directory(models, tmp_path, monkeypatch):
    # ... beside the export (staging is named with the pid), not in a /tmp/lps_verify_* no one removes.
    from lps_keras.export import savedmodel

    seen = {}

    def spy(path, *args, work_dir=None, **kwargs):
        seen["work_dir"] = work_dir
        raise ex.ExportError("stop here")

    monkeypatch.setattr(savedmodel, "verify_savedmodel", spy)
    with pytest.raises(ex.ExportError, match="stop here"):
        ex.export_savedmodel(models[1], tmp_path / "m", 1)
    assert seen["work_dir"].parent == tmp_path / "m" and f"lpstmp-{os.getpid()}-" in seen["work_dir"].name
    assert list((tmp_path / "m").iterdir()) == []


def test_export_to_a_relative_directory_verifies(models, tmp_path, monkeypatch):
    # export.py's default output (savedmodels/<name>) is relative: the verifier, which runs with its own
    # directory as cwd, once resolved its script's relative path twice and every such export failed.
    monkeypatch.chdir(tmp_path)
    ex.export_savedmodel(models[1], Path("rel") / "m", 1)
    assert (tmp_path / "rel" / "m" / "1" / "saved_model.pb").is_file()


def test_export_refuses_an_input_size_that_does_not_fit_memory(tmp_path):
    from lps_keras.errors import ResourceError
    from lps_keras.export.savedmodel import export_memory_estimate
    from lps_keras.memory import check_memory
    from lps_keras.recipe import load_recipe

    assert export_memory_estimate(ARCH, (20000, 20000)) > 100 * 1024**3
    assert export_memory_estimate(ARCH, (H, W)) < 50 * 1024**2
    with pytest.raises(ResourceError, match=r"needs about 2\.0 GB of memory, but only 1\.0 GB is available"):
        check_memory(2 * 1024**3, "x", "y", available=1024**3)
    recipe = load_recipe(REPO / "recipes/lps_tiny.json", ["export.input_size=[20000, 20000]"])
    out = tmp_path / "m"
    with pytest.raises(ResourceError, match=r"input size 20000x20000 .* GB of memory, but only .*--input-size"):
        ex.export_recipe(recipe, ex.ExportOptions(output=str(out)), log=lambda m: None, warn=lambda m: None)
    assert not out.exists()


def test_a_second_export_of_a_model_directory_stops_naming_the_holder(tmp_path):
    import signal

    from lps_keras.errors import BusyError
    from lps_keras.recipe import load_recipe

    out = tmp_path / "m"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lps_keras.fileio import DirectoryLock\n"
                               "DirectoryLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        recipe = load_recipe(REPO / "recipes/lps_tiny.json", ["model.num_classes=4"])
        with pytest.raises(BusyError, match=rf"{out}: this model directory is in use by process {holder.pid}"):
            ex.export_recipe(recipe, ex.ExportOptions(output=str(out), verify=False), log=lambda m: None,
                             warn=lambda m: None)
        assert not (out / "1").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_an_unforeseen_memory_error_leaves_no_empty_model_directory(tmp_path, monkeypatch):
    # cli.guarded makes the MemoryError one line; the export must not leave savedmodels/<name>/ behind.
    from lps_keras.export import savedmodel
    from lps_keras.recipe import load_recipe

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(savedmodel, "export_savedmodel", out_of_memory)
    recipe = load_recipe(REPO / "recipes/lps_tiny.json", ["export.input_size=null"])
    out = tmp_path / "m"
    with pytest.raises(MemoryError):
        ex.export_recipe(recipe, ex.ExportOptions(output=str(out), verify=False), log=lambda m: None,
                         warn=lambda m: None)
    assert not out.exists()
