"""The fused SavedModel for TF Serving, and its verification in a fresh process.

The SavedModel written by :func:`export_savedmodel` is self-contained: it takes raw ``uint8``
images (or encoded JPEG/PNG bytes), normalises them with the ImageNet mean/std, runs the fused
deploy network, upsamples the logits to the input resolution (align-corners bilinear, like
training) and returns ``labels`` plus ``probabilities`` (softmax) or ``logits``; a third signature,
``network_logits``, returns the network's logits before the upsampling (predict.py's bounded-memory
labels). Nothing from
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

from lps_keras import compat, fileio
from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
from lps_keras.errors import DiskFullError, UsageError, is_disk_full
from lps_keras.export.common import ExportError, OutputExistsError, check_choice, move_into_place, num_classes_of
from lps_keras.export.precision import PRECISIONS, reference_outputs
from lps_keras.export.serving import (
    NETWORK_LOGITS_SIGNATURE,
    OUTPUT_KINDS,
    WEIGHT_KINDS,
    network_logits_function,
    serving_functions,
)


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
    graph_weights: str = "constants",
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
        graph_weights: ``constants`` (default) stores the weights as constants of the serving graph, which
            lets TensorFlow's oneDNN kernels cache them in their fast layout (LPS-S 2x faster in
            TensorFlow's TF1 session, the executor TF Serving uses, with ``TF_ENABLE_ONEDNN_OPTS=1`` on
            an AVX2 CPU; not measured in a tensorflow_model_server binary; see
            :func:`lps_keras.export.serving.constant_network`); ``variables`` keeps them as variables.
    """
    import keras
    import tensorflow as tf
    check_choice("outputs", outputs, OUTPUT_KINDS)
    check_choice("precision", precision, PRECISIONS)
    check_choice("graph_weights", graph_weights, WEIGHT_KINDS)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"version must be an integer >= 1, got {version!r}")
    if num_classes is not None and num_classes != num_classes_of(deploy_model):
        raise UsageError(f"num_classes={num_classes!r} but the model outputs {num_classes_of(deploy_model)} classes")
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
    out_dir = Path(out_dir)
    target = out_dir / str(version)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; choose another --version or pass overwrite=True")
    out_dir.mkdir(parents=True, exist_ok=True)

    net, (serve_images, image_spec), (serve_bytes, bytes_spec) = serving_functions(
        deploy_model, input_size, outputs, precision, graph_weights)
    fileio.remove_stale_temps(out_dir)  # staging directories (and verification files) of a killed export
    fileio.remove_stale_temps(tempfile.gettempdir())  # verification dirs of standalone verify_savedmodel calls
    try:
        staging = Path(tempfile.mkdtemp(prefix=fileio.temp_prefix(str(version)), dir=out_dir))
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(out_dir, "nothing was written") from None
        raise
    try:
        archive = keras.export.ExportArchive()
        if graph_weights == "variables":
            archive.track(net.model)
            compat.export_archive_single_copy(archive)  # else every weight is stored twice
        archive.add_endpoint("serving_default", serve_images, input_signature=[image_spec])
        archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[bytes_spec])
        # The network's own logits (before the upsampling), for predict.py's bounded-memory labels.
        logits_fn, logits_spec = network_logits_function(net, input_size)
        archive.add_endpoint(NETWORK_LOGITS_SIGNATURE, logits_fn, input_signature=[logits_spec])
        tmp_model = staging / "model"
        archive.write_out(str(tmp_model), verbose=False)
        meta = {
            "format": "lps_keras SavedModel", "outputs": outputs, "precision": precision,
            "input_size": list(input_size) if input_size else None, "num_classes": num_classes_of(deploy_model),
            "graph_weights": graph_weights,
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
                                       outputs=outputs, precision=precision, work_dir=staging)
            report["path"] = str(target)
        _write_signatures_txt(tmp_model)
        move_into_place(tmp_model, target, overwrite)
    except Exception as e:
        # A full disk surfaces as OSError(ENOSPC) or as a TensorFlow ResourceExhaustedError / "errno = 28"
        # from the SavedModel writer; the staging (all that was written) goes in the finally below.
        if is_disk_full(e):
            raise DiskFullError(out_dir, f"the export of version {version} was removed") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(target, version, outputs, precision, input_size, report)


def export_memory_estimate(arch, input_size) -> int:
    """Rough bytes an export at ``input_size`` needs: verification runs the network at that size here and in
    a child process and compares full-resolution outputs (logits, probabilities, labels of both signatures).

    A lower bound by design (so that no export that fits is refused): about 8 float32 copies of the
    per-pixel class scores, the test image and its float copies, and each path's first-stage activations.
    """
    pixels = int(input_size[0]) * int(input_size[1])
    per_pixel = 8 * 4 * arch.num_classes + 100
    if hasattr(arch, "resolution"):  # LPS-Net: each path's first-stage activations
        per_pixel += sum(r * r * (12 + 2 * 4 * arch.width[0] / 4) for r in arch.resolution if r > 0)
    return int(pixels * per_pixel)


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


def sample_image(height=64, width=128, seed=0) -> np.ndarray:
    """A deterministic uint8 test image with smooth regions and edges (not pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0.5 * np.sin(xx / 7 + yy / 5)], -1)
    img = img * 200 + rng.normal(0, 20, img.shape)
    img[height // 3: 2 * height // 3, width // 4: width // 2] = (250, 30, 30)
    return np.clip(img, 0, 255).astype(np.uint8)


#: First lines of every verification child: it dies with its parent (``kill -9`` of export.py included)
#: instead of running on for minutes. Linux: prctl(PR_SET_PDEATHSIG, SIGKILL); the parent pid in argv
#: catches a parent that died before the prctl call. Elsewhere the child simply runs to its end.
DIE_WITH_PARENT = textwrap.dedent("""
    import os, signal, sys
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(os.environ.get("LPS_PARENT_PID", os.getppid())):
        sys.exit(1)  # the parent is already gone
""")

_VERIFY_SCRIPT = DIE_WITH_PARENT + textwrap.dedent("""
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


def verify_savedmodel(path, keras_model, image=None, outputs=None, precision=None, rtol=1e-4, timeout=600,
                      work_dir=None) -> dict:
    """Load ``path`` in a fresh interpreter that imports only TensorFlow and compare to ``keras_model``.

    The child runs with ``python -I`` from a scratch directory and reports whether any
    ``lps_keras`` module got imported; both signatures are run on ``image`` (uint8 HWC; default
    :func:`sample_image`, sent as PNG to ``serve_bytes`` so decoding is lossless). Labels must match
    except where the reference's top-two logits are within the tolerance (argmax ties); logits
    (or probabilities) must be within ``rtol`` of the largest reference magnitude.
    For a bf16 export the reference is the Keras model run eagerly in bf16, with tolerance 5e-2
    and ties defined at that scale. Raises :class:`ExportError` on any mismatch; returns a report dict.

    The child's files go to a directory in ``work_dir`` (default the system temp directory) named with
    this process' id (:func:`lps_keras.fileio.temp_prefix`), so a run killed mid-verification leaves
    something the next export's :func:`~lps_keras.fileio.remove_stale_temps` recognises and removes;
    the child dies with this process.
    """
    from PIL import Image

    path = Path(path)
    meta_file = path / "assets.extra" / "lps_keras_export.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    outputs = outputs or meta.get("outputs", "probabilities")
    precision = precision or meta.get("precision", "fp32")
    if image is None:
        size = meta.get("input_size") or (64, 128)
        image = sample_image(*size)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"verify image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    batch = image[None]
    with tempfile.TemporaryDirectory(prefix=fileio.temp_prefix("lps_verify"), dir=work_dir) as tmp:
        tmp = Path(tmp).resolve()  # the verifier runs with cwd=tmp: a relative work_dir would resolve twice
        np.save(tmp / "image.npy", batch)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        (tmp / "image.png").write_bytes(buf.getvalue())
        (tmp / "verify.py").write_text(_VERIFY_SCRIPT)
        from lps_keras.cli import quiet_env, strip_startup_noise

        env = quiet_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        env["LPS_PARENT_PID"] = str(os.getpid())
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
