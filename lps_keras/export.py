"""Deployment: fused SavedModels for TF Serving, verification, TF-TRT, ONNX, TensorRT and bf16.

The SavedModel written by :func:`export_savedmodel` is self-contained: it takes raw ``uint8``
images (or encoded JPEG/PNG bytes), normalises them with the ImageNet mean/std, runs the fused
deploy network, upsamples the logits to the input resolution (align-corners bilinear, like
training) and returns ``labels`` plus ``probabilities`` (softmax) or ``logits``. Nothing from
this project is needed to load it: :func:`verify_savedmodel` proves that in a fresh process.

Every writer stages into a temporary directory beside the target and renames it into place, so
an interrupted or failed export never leaves a half-written version that TF Serving would pick
up.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras import fileio
from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
from lps_keras.fileio import atomic_write_text, publish_tree

OUTPUT_KINDS = ("probabilities", "logits")
PRECISIONS = ("fp32", "bf16")
TFTRT_REQUIREMENTS = "requirements-tftrt.txt"
TENSORRT_REQUIREMENTS = "requirements-tensorrt.txt"


class ExportError(RuntimeError):
    """An export step could not be done; the message says which and why."""


class BackendUnavailable(ExportError):
    """A conversion backend (TF-TRT, TensorRT, GPU) is missing on this machine."""


# --------------------------------------------------------------------------- helpers
def _tf():
    import tensorflow as tf

    return tf


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x2048"`` -> (1024, 2048); raises ValueError quoting the text."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"input size must look like HEIGHTxWIDTH (e.g. 1024x2048), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"input size must be positive, got {text!r}")
    return h, w


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _num_classes(model) -> int:
    return int(model.outputs[0].shape[-1])


def bf16_model(deploy_model):
    """A copy of ``deploy_model`` computing in bfloat16 (variables stay float32).

    Built with Keras' ``mixed_bfloat16`` policy, so on CPUs with AVX512-BF16/AMX oneDNN runs the
    convolutions in bf16 while the weights keep full precision for the casts.
    """
    import keras

    from lps_keras.model import arch_from_model, build_model

    arch = arch_from_model(deploy_model)
    deploy = _is_deploy(deploy_model)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        upsample = any(layer.name == "logits_upsample" for layer in deploy_model.layers)
        model = build_model(arch, deploy=deploy, upsample_logits=upsample, input_shape=deploy_model.input_shape[1:],
                            name=f"{deploy_model.name}_bf16")
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in deploy_model.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def _is_deploy(model) -> bool:
    from lps_keras.layers import RepConvBlock

    blocks = [layer for layer in model.layers if isinstance(layer, RepConvBlock)]
    return bool(blocks) and all(b.deploy for b in blocks)


def serving_functions(deploy_model, input_size=None, outputs="probabilities", precision="fp32"):
    """The two serving ``tf.function``s (uint8 images, encoded bytes) and their input specs."""
    tf = _tf()
    from lps_keras.layers import resize_bilinear

    _check_choice("outputs", outputs, OUTPUT_KINDS)
    _check_choice("precision", precision, PRECISIONS)
    net = bf16_model(deploy_model) if precision == "bf16" else deploy_model
    h, w = (None, None) if input_size is None else (int(input_size[0]), int(input_size[1]))
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def heads(images):
        x = (tf.cast(images, tf.float32) / 255.0 - mean) / std
        logits = tf.cast(net(x, training=False), tf.float32)
        if not (None not in logits.shape[1:3] and logits.shape[1:3] == images.shape[1:3]):
            logits = resize_bilinear(logits, (tf.shape(images)[1], tf.shape(images)[2]))
        result = {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}
        result[outputs] = tf.nn.softmax(logits, axis=-1) if outputs == "probabilities" else logits
        return result

    image_spec = tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

    def serve_images(images):
        return heads(images)

    def serve_bytes(image_bytes):
        def decode(b):
            img = tf.io.decode_image(b, channels=3, dtype=tf.uint8, expand_animations=False)
            img.set_shape([h, w, 3])
            return img

        # map_fn stacks the decoded images: they must all have one size (documented).
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([h, w, 3], tf.uint8))
        if h is not None:
            images = tf.ensure_shape(images, [None, h, w, 3])
        return heads(images)

    return net, (serve_images, image_spec), (serve_bytes, bytes_spec)


# --------------------------------------------------------------------------- SavedModel
@dataclasses.dataclass
class ExportResult:
    path: Path
    version: int
    outputs: str
    precision: str
    input_size: Optional[tuple[int, int]]
    verification: Optional[dict] = None


def export_savedmodel(
    deploy_model,
    out_dir,
    version: int = 1,
    input_size=None,
    outputs: str = "probabilities",
    precision: str = "fp32",
    num_classes: Optional[int] = None,
    overwrite: bool = False,
    verify: bool = True,
    reference_model=None,
    verify_image=None,
) -> ExportResult:
    """Write ``deploy_model`` as ``<out_dir>/<version>/`` with ``serving_default`` and ``serve_bytes``.

    Args:
        deploy_model: a fused model from :func:`lps_keras.reparam.reparameterize` (a training-form
            model also works but serves slower).
        out_dir: the model's base directory (what TF Serving's ``base_path`` points at).
        version: integer version directory.
        input_size: (H, W) for a static-shape graph (TensorRT); None accepts any size.
        outputs: ``probabilities`` (softmax) or ``logits``, both float32 at the input size.
        precision: ``fp32`` or ``bf16`` (compute in bfloat16 for CPUs with AVX512-BF16/AMX).
        num_classes: optional check against the model's class count.
        overwrite: replace an existing version (otherwise refuse).
        verify: run :func:`verify_savedmodel` on the staged copy before it is moved into place.
        reference_model: the Keras model to compare against (default ``deploy_model``).
        verify_image: uint8 (H, W, 3) test image; default a deterministic synthetic image.
    """
    import keras

    tf = _tf()
    _check_choice("outputs", outputs, OUTPUT_KINDS)
    _check_choice("precision", precision, PRECISIONS)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}")
    if num_classes is not None and num_classes != _num_classes(deploy_model):
        raise ValueError(f"num_classes={num_classes!r} but the model outputs {_num_classes(deploy_model)} classes")
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
    out_dir = Path(out_dir)
    target = out_dir / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another --version or pass overwrite=True")
    out_dir.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temps(out_dir)  # staging directories of an export that was killed

    net, (serve_images, image_spec), (serve_bytes, bytes_spec) = serving_functions(
        deploy_model, input_size, outputs, precision)
    staging = Path(tempfile.mkdtemp(prefix=fileio.temp_prefix(str(version)), dir=out_dir))
    try:
        archive = keras.export.ExportArchive()
        archive.track(net)
        archive.add_endpoint("serving_default", serve_images, input_signature=[image_spec])
        archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[bytes_spec])
        tmp_model = staging / "model"
        archive.write_out(str(tmp_model), verbose=False)
        meta = {
            "format": "lps_keras SavedModel", "outputs": outputs, "precision": precision,
            "input_size": list(input_size) if input_size else None, "num_classes": _num_classes(deploy_model),
            "normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "scale": "1/255"},
            "signatures": {"serving_default": "images uint8 [batch,H,W,3]",
                           "serve_bytes": "image_bytes string [batch] (JPEG/PNG, one size per batch)"},
            "tensorflow": tf.__version__, "keras": keras.__version__,
        }
        # assets.extra is the SavedModel place for files that are not part of the graph.
        (tmp_model / "assets.extra").mkdir(exist_ok=True)
        (tmp_model / "assets.extra" / "lps_keras_export.json").write_text(json.dumps(meta, indent=2))
        report = None
        if verify:
            report = verify_savedmodel(tmp_model, reference_model or deploy_model, image=verify_image,
                                       outputs=outputs, precision=precision)
            report["path"] = str(target)
        _write_signatures_txt(tmp_model)
        _move_into_place(tmp_model, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(target, version, outputs, precision, input_size, report)


def _move_into_place(src: Path, target: Path, overwrite: bool):
    publish_tree(src)
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} already exists")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, target)


def saved_model_cli() -> str:
    cli = Path(sys.executable).with_name("saved_model_cli")
    return str(cli) if cli.exists() else (shutil.which("saved_model_cli") or "saved_model_cli")


def _write_signatures_txt(model_dir: Path):
    """``saved_model_cli show --all`` beside the graph; a note instead if the CLI fails."""
    try:
        proc = subprocess.run([saved_model_cli(), "show", "--all", "--dir", str(model_dir)],
                              capture_output=True, text=True, timeout=300)
        text = proc.stdout if proc.returncode == 0 else f"saved_model_cli failed ({proc.returncode}):\n{proc.stderr}"
    except (OSError, subprocess.TimeoutExpired) as e:
        text = f"saved_model_cli could not be run: {e}\n"
    (model_dir / "signatures.txt").write_text(text)


def test_image(height=64, width=128, seed=0) -> np.ndarray:
    """A deterministic uint8 test image with smooth regions and edges (not pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0.5 * np.sin(xx / 7 + yy / 5)], -1)
    img = img * 200 + rng.normal(0, 20, img.shape)
    img[height // 3: 2 * height // 3, width // 4: width // 2] = (250, 30, 30)
    return np.clip(img, 0, 255).astype(np.uint8)


def resize_bilinear_np(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Align-corners bilinear resize of NHWC ``x`` in float64 (independent reference)."""
    x = np.asarray(x, np.float64)
    _, h, w, _ = x.shape

    def coords(n_in, n_out):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = coords(h, out_h)
    x0, x1, fx = coords(w, out_w)
    rows = x[:, y0] + (x[:, y1] - x[:, y0]) * fy[None, :, None, None]
    return rows[:, :, x0] + (rows[:, :, x1] - rows[:, :, x0]) * fx[None, None, :, None]


def reference_outputs(keras_model, images_uint8: np.ndarray, precision="fp32") -> dict:
    """Keras model output for uint8 ``images``: normalised in numpy, logits resized in numpy."""
    x = (images_uint8.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32)
    model = bf16_model(keras_model) if precision == "bf16" else keras_model
    logits = np.asarray(model(x, training=False), np.float32)
    h, w = images_uint8.shape[1:3]
    if logits.shape[1:3] != (h, w):
        logits = resize_bilinear_np(logits, h, w)
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return {"logits": logits, "probabilities": e / e.sum(-1, keepdims=True),
            "labels": logits.argmax(-1).astype(np.int32)}


_VERIFY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    model_dir, image_file, png_file, out_file = sys.argv[1:5]
    loaded = tf.saved_model.load(model_dir)
    image = np.load(image_file)
    png = open(png_file, "rb").read()
    sigs = sorted(loaded.signatures.keys())
    res = {}
    out = loaded.signatures["serving_default"](images=tf.constant(image))
    res.update({"serving_default/" + k: v.numpy() for k, v in out.items()})
    out = loaded.signatures["serve_bytes"](image_bytes=tf.constant([png] * image.shape[0]))
    res.update({"serve_bytes/" + k: v.numpy() for k, v in out.items()})
    np.savez(out_file, **res)
    info = {"signatures": sigs, "lps_keras_imported": any(m.split(".")[0] == "lps_keras" for m in sys.modules),
            "tensorflow": tf.__version__,
            "inputs": {k: str(v.structured_input_signature) for k, v in loaded.signatures.items()}}
    print("VERIFY_INFO " + json.dumps(info))
""")


def verify_savedmodel(path, keras_model, image=None, outputs=None, precision=None, rtol=1e-4, timeout=600) -> dict:
    """Load ``path`` in a fresh interpreter that imports only TensorFlow and compare to ``keras_model``.

    The child runs with ``python -I`` from a scratch directory and reports whether any
    ``lps_keras`` module got imported; both signatures are run on ``image`` (uint8 HWC; default
    :func:`test_image`, sent as PNG to ``serve_bytes`` so decoding is lossless). Labels must match
    except where the reference's top-two logits are within the tolerance (argmax ties); logits
    (or probabilities) must be within ``rtol`` of the largest reference magnitude.
    For a bf16 export the reference is the Keras model run eagerly in bf16, with tolerance 5e-2
    and ties defined at that scale. Raises :class:`ExportError` on any mismatch; returns a report dict.
    """
    from PIL import Image

    path = Path(path)
    meta_file = path / "assets.extra" / "lps_keras_export.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    outputs = outputs or meta.get("outputs", "probabilities")
    precision = precision or meta.get("precision", "fp32")
    if image is None:
        size = meta.get("input_size") or (64, 128)
        image = test_image(*size)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"verify image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    batch = image[None]
    with tempfile.TemporaryDirectory(prefix="lps_verify_") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "image.npy", batch)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        (tmp / "image.png").write_bytes(buf.getvalue())
        (tmp / "verify.py").write_text(_VERIFY_SCRIPT)
        from lps_keras.cli import quiet_env, strip_startup_noise

        env = quiet_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        proc = subprocess.run(
            [sys.executable, "-I", str(tmp / "verify.py"), str(path.resolve()), str(tmp / "image.npy"),
             str(tmp / "image.png"), str(tmp / "out.npz")],
            capture_output=True, text=True, cwd=tmp, env=env, timeout=timeout)
        if proc.returncode != 0:
            raise ExportError(f"verification: loading {path} in a fresh TensorFlow process failed:\n"
                              f"{strip_startup_noise(proc.stderr)[-3000:]}")
        info_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("VERIFY_INFO ")]
        info = json.loads(info_line[-1][len("VERIFY_INFO "):]) if info_line else {}
        with np.load(tmp / "out.npz") as z:
            got = {k: z[k] for k in z.files}
    if info.get("lps_keras_imported"):
        raise ExportError(f"verification: loading {path} imported lps_keras; the SavedModel is not self-contained")
    ref = reference_outputs(keras_model, batch, precision=precision)
    report = {"path": str(path), "signatures": info.get("signatures"), "outputs": outputs, "precision": precision,
              "image_shape": list(image.shape), "lps_keras_imported": False}
    # bf16 (8 mantissa bits) is compared with the same model run eagerly in bf16; graph and eager
    # round differently, so it gets a bf16-sized tolerance and a label-agreement floor instead.
    tol = rtol if precision == "fp32" else max(rtol, 5e-2)
    scale = np.abs(ref[outputs]).max() or 1.0
    if precision == "bf16":
        # softmax moves by at most about the logits' error, so bf16 probabilities are judged
        # against the logit scale: a bf16 rounding of a large logit can shift a near-tie by 0.1.
        scale = max(scale, np.abs(ref["logits"]).max())
    top2 = np.sort(ref["logits"], axis=-1)[..., -2:]
    tie_gap = tol * np.abs(ref["logits"]).max() * (4 if precision == "fp32" else 2)
    for sig in ("serving_default", "serve_bytes"):
        labels = got[f"{sig}/labels"]
        values = got[f"{sig}/{outputs}"]
        if labels.shape != ref["labels"].shape or labels.dtype != np.int32:
            raise ExportError(f"verification: {sig} labels are {labels.dtype} {labels.shape}, "
                              f"expected int32 {ref['labels'].shape}")
        if values.shape != ref[outputs].shape:
            raise ExportError(f"verification: {sig} {outputs} shape {values.shape}, expected {ref[outputs].shape}")
        rel = float(np.abs(values - ref[outputs]).max() / scale)
        differ = labels != ref["labels"]
        ties = differ & ((top2[..., 1] - top2[..., 0]) <= tie_gap)
        bad = int((differ & ~ties).sum())
        report[sig] = {"max_rel_error": rel, "label_mismatches": int(differ.sum()),
                       "mismatches_at_ties": int(ties.sum()), "label_agreement": float(1.0 - differ.mean())}
        if rel > tol:
            raise ExportError(f"verification: {sig} {outputs} differ from Keras by {rel:.3g} relative (> {tol:g})")
        if bad:
            raise ExportError(f"verification: {sig} has {bad} label(s) differing from Keras away from argmax ties")
    return report


# --------------------------------------------------------------------------- TF Serving
def write_models_config(base_dir, name: str, base_path: Optional[str] = None) -> Path:
    """Write ``<base_dir>/models.config`` (TF Serving ``--model_config_file`` text proto), atomically.

    ``base_path`` defaults to the absolute path of ``base_dir`` (for a local
    ``tensorflow_model_server``); pass ``/models/<name>`` for a config used inside Docker.
    """
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    base_path = base_path or str(base_dir.resolve())
    text = (
        "model_config_list {\n"
        "  config {\n"
        f"    name: {json.dumps(name)}\n"
        f"    base_path: {json.dumps(base_path)}\n"
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )
    path = base_dir / "models.config"
    atomic_write_text(path, text)
    return path


def serving_commands(base_dir, name: str, image: str = "image.jpg", port: int = 8501) -> dict:
    """The exact commands to serve ``base_dir`` and query it over REST."""
    base = Path(base_dir).resolve()
    payload = f'{{"signature_name": "serve_bytes", "instances": [{{"b64": "\'"$(base64 -w0 {image})"\'"}}]}}'
    return {
        "tensorflow_model_server": (f"tensorflow_model_server --rest_api_port={port} "
                                    f"--model_config_file={base / 'models.config'}"),
        "docker": (f"docker run --rm -p {port}:8501 --mount type=bind,source={base},target=/models/{name} "
                   f"-e MODEL_NAME={name} -t tensorflow/serving"),
        "curl": (f"curl -s -X POST http://localhost:{port}/v1/models/{name}:predict "
                 f"-H 'Content-Type: application/json' "
                 f"-d '{payload}'"),
        "metadata": f"curl -s http://localhost:{port}/v1/models/{name}/metadata",
    }


def format_serving_commands(base_dir, name: str) -> str:
    cmds = serving_commands(base_dir, name)
    return "\n".join([
        "Serve locally:", "  " + cmds["tensorflow_model_server"],
        "or with Docker:", "  " + cmds["docker"],
        "Query (REST, encoded image through serve_bytes):", "  " + cmds["curl"],
        "Signatures:", "  " + cmds["metadata"],
    ])


# --------------------------------------------------------------------------- TF-TRT
def tftrt_status() -> tuple[bool, str]:
    """(available, reason). TF-TRT needs a TensorFlow built and linked with TensorRT (<= 2.17)."""
    try:
        tf = _tf()
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as trt_utils
    except ImportError as e:
        return False, f"TensorFlow has no TF-TRT module ({e})"
    if not trt_utils.is_tensorrt_enabled():
        return False, f"TensorFlow {tf.__version__} was built without TensorRT"
    if not tf.config.list_physical_devices("GPU"):
        return False, "no GPU is visible to TensorFlow"
    return True, "TensorRT {}.{}.{} linked".format(*trt_utils.get_linked_tensorrt_version())


def _require_tftrt():
    ok, reason = tftrt_status()
    if not ok:
        raise BackendUnavailable(
            f"TF-TRT is not available: {reason}. TF-TRT was removed from TensorFlow 2.18+; install the "
            f"TensorFlow 2.17 + TensorRT 8.6 line from {TFTRT_REQUIREMENTS} on an NVIDIA GPU machine "
            f"(see the comments in that file) and run the export there.")


def convert_tftrt(saved_model_dir, out_dir, precision="fp16", input_shape=(1, 1024, 2048, 3),
                  signature="serving_default", overwrite=False) -> dict:
    """Convert a static-shape SavedModel with TF-TRT; build engines before saving.

    Runs only on the TF 2.17 line with a GPU (see ``requirements-tftrt.txt``). The converter
    replaces supported subgraphs with ``TRTEngineOp`` nodes; ``build()`` creates their engines for
    ``input_shape`` now so the first request does not pay for it. Raises :class:`ExportError` if no
    op was converted (a "TF-TRT model" without engines is just a slower SavedModel).
    """
    _check_choice("precision", precision, ("fp32", "fp16"))
    _require_tftrt()
    tf = _tf()
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    converter = trt.TrtGraphConverterV2(
        input_saved_model_dir=str(saved_model_dir),
        input_saved_model_signature_key=signature,
        precision_mode=trt.TrtPrecisionMode.FP16 if precision == "fp16" else trt.TrtPrecisionMode.FP32,
        use_dynamic_shape=False,  # static shape: one engine, built for input_shape
    )
    converted = converter.convert()
    graph_def = converted.graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    engines = [n for n in nodes if n.op == "TRTEngineOp"]
    native = [n for n in nodes if n.op not in ("TRTEngineOp", "Placeholder", "Identity", "NoOp", "Const")]
    if not engines:
        raise ExportError(f"TF-TRT converted no op of {saved_model_dir} (0 TRTEngineOp nodes); not saving it")
    segment_ops = sum(len(f.node_def) for f in graph_def.library.function if "TRTEngineOp" in f.signature.name)
    share = segment_ops / max(segment_ops + len(native), 1)

    def input_fn():
        yield (tf.zeros(input_shape, tf.uint8),)

    converter.build(input_fn=input_fn)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temps(out_dir.parent)
    staging = Path(tempfile.mkdtemp(prefix=fileio.temp_prefix("tftrt"), dir=out_dir.parent))
    try:
        converter.save(str(staging / "model"))
        _move_into_place(staging / "model", out_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(out_dir), "trt_engine_ops": len(engines), "native_ops": len(native),
            "converted_share": share, "precision": precision, "input_shape": list(input_shape)}


# --------------------------------------------------------------------------- ONNX
def _core_function(model, input_shape):
    tf = _tf()
    spec = tf.TensorSpec(input_shape, tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def core(image):
        return {"logits": model(image, training=False)}

    return core, [spec]


def export_onnx(target, path, opset: int = 17, input_shape=(1, None, None, 3), verify: bool = True,
                rtol: float = 1e-4) -> dict:
    """Convert to ONNX with tf2onnx and check parity with onnxruntime.

    ``target`` is a Keras model (converted as the bare network: float32 NHWC normalised image ->
    ``logits`` at 1/16, the graph TensorRT and the latency benchmark use) or a SavedModel directory
    from :func:`export_savedmodel` (its ``serving_default``: uint8 -> labels + outputs).
    Align-corners ``ResizeBilinear`` becomes ONNX ``Resize`` with
    ``coordinate_transformation_mode="align_corners"``.
    """
    import tf2onnx

    tf = _tf()
    if opset < 13:
        raise ValueError(f"opset must be >= 13 (Resize with align_corners), got {opset!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temps(path.parent)
    tmp = path.with_name(fileio.temp_prefix(path.name) + "0")
    try:
        if isinstance(target, (str, os.PathLike)):
            loaded = tf.saved_model.load(str(target))
            fn = loaded.signatures["serving_default"]
            spec = fn.structured_input_signature[1]["images"]
            model_proto, _ = tf2onnx.convert.from_function(
                tf.function(lambda images: fn(images=images)), input_signature=[spec], opset=opset,
                output_path=str(tmp))
            keras_model = None
        else:
            keras_model = target
            core, sig = _core_function(target, input_shape)
            model_proto, _ = tf2onnx.convert.from_function(core, input_signature=sig, opset=opset,
                                                           output_path=str(tmp))
        report = {"path": str(path), "opset": opset, "resize_modes": onnx_resize_modes(model_proto)}
        if verify and keras_model is not None:
            report.update(onnx_parity(tmp, keras_model, input_shape, rtol=rtol))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return report


def onnx_resize_modes(model_proto) -> list[str]:
    """``coordinate_transformation_mode`` of every ONNX ``Resize`` node (graph and subgraphs)."""
    modes = []

    def walk(graph):
        for node in graph.node:
            if node.op_type == "Resize":
                attrs = {a.name: a for a in node.attribute}
                a = attrs.get("coordinate_transformation_mode")
                modes.append(a.s.decode() if a is not None else "half_pixel")
            for a in node.attribute:
                if a.g is not None and len(a.g.node):
                    walk(a.g)

    walk(model_proto.graph)
    return modes


def onnx_parity(onnx_path, keras_model, input_shape=(1, None, None, 3), rtol=1e-4, threads=None) -> dict:
    import onnxruntime as ort

    shape = [d if d is not None else s for d, s in zip(input_shape, (1, 64, 128, 3))]
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, shape).astype(np.float32)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = np.asarray(keras_model(x, training=False))
    rel = float(np.abs(got - ref).max() / (np.abs(ref).max() or 1.0))
    if rel > rtol:
        raise ExportError(f"ONNX parity: onnxruntime differs from Keras by {rel:.3g} relative (> {rtol:g})")
    return {"onnxruntime_max_rel_error": rel, "parity_input_shape": shape}


# --------------------------------------------------------------------------- TensorRT
def _require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            f"the TensorRT Python package is not installed; on an NVIDIA GPU machine run "
            f"`pip install -r {TENSORRT_REQUIREMENTS}` (TensorRT 10.x)") from None
    if not trt.__version__.startswith("10."):
        raise BackendUnavailable(f"TensorRT {trt.__version__} found; this project needs 10.x ({TENSORRT_REQUIREMENTS})")
    return trt


def build_tensorrt_engine(onnx_path, engine_path, precision="fp16", workspace_gib=4) -> dict:
    """Build a serialized TensorRT 10 engine from an ONNX file (static shapes).

    FP16 is the ``BuilderFlag.FP16`` flag: TensorRT keeps FP32 where FP16 kernels are not
    faster or not supported. The engine is tied to the GPU model and TensorRT version.
    """
    _check_choice("precision", precision, ("fp32", "fp16"))
    trt = _require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path = Path(engine_path)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    return {"path": str(engine_path), "precision": precision, "tensorrt": trt.__version__}


# --------------------------------------------------------------------------- bf16 parity
def bf16_parity(deploy_model, image: np.ndarray) -> dict:
    """Label agreement and logits error of the bf16 variant against fp32 on ``image`` (uint8 HWC)."""
    batch = np.asarray(image, np.uint8)[None]
    fp32 = reference_outputs(deploy_model, batch, precision="fp32")
    bf16 = reference_outputs(deploy_model, batch, precision="bf16")
    scale = np.abs(fp32["logits"]).max() or 1.0
    return {
        "label_agreement": float((fp32["labels"] == bf16["labels"]).mean()),
        "logits_max_rel_error": float(np.abs(bf16["logits"] - fp32["logits"]).max() / scale),
        "logits_mean_rel_error": float(np.abs(bf16["logits"] - fp32["logits"]).mean() / scale),
        "image_shape": list(np.shape(image)),
    }


# --------------------------------------------------------------------------- model loading
def prepare_deploy_model(arch, weights=None, input_shape=(None, None, 3)):
    """(reference_model, deploy_model) for ``arch`` from ``weights``.

    ``weights``: None (random init; the caller warns), a ``.keras`` file in training or deploy form
    (detected from its blocks; the stored architecture must equal ``arch``), or official
    weights (``.pth`` / ``.npz``) loaded into a deploy model. The reference model is the one the
    export is verified against: the training-form model when there is one, so verification also
    covers the re-parameterisation.
    """

    from lps_keras.model import arch_from_model, build_model, load_weights_file
    from lps_keras.reparam import reparameterize

    if weights is None:
        model = build_model(arch, deploy=False, input_shape=input_shape)
        return model, reparameterize(model)
    model = load_weights_file(weights, arch, input_shape)
    found = arch_from_model(model)
    if found != arch:
        raise ValueError(f"{weights}: the weights' architecture does not match the recipe's: "
                         f"{found.differences(arch, ('weights', 'recipe'))}")
    return model, (model if _is_deploy(model) else reparameterize(model))
