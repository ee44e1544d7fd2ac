"""Edge and CPU deployment: LiteRT (``.tflite``) and OpenVINO IR (``.xml`` + ``.bin``).

Both are converted from a SavedModel of the bare deploy network (float32 ImageNet-normalised NHWC
image, batch 1, static size -> float32 ``logits`` at 1/16), written with Keras' ``model.export``:
a SavedModel from ``tf.saved_model.save(keras_model)`` keeps the weights as resource variables,
which the LiteRT converter turns into garbage (fp32) or NaN (fp16). This is the same graph as the
ONNX / TensorRT exports and the latency benchmark; the served SavedModel version (uint8 in,
labels out) is verified equal to it separately.

Precisions: LiteRT ``fp32`` / ``fp16`` (fp16 weights) / ``int8`` (full-integer, float input and
output, calibrated on real training images); OpenVINO ``fp32`` / ``bf16`` / ``int8`` (NNCF
post-training quantization, same calibration). OpenVINO's CPU plugin runs f32 models in bf16 by
default on CPUs with AVX512-BF16, so the intended inference precision is stored in the IR's
``rt_info`` (``lps_keras/inference_precision``) and :func:`openvino_predictor` passes it as
``INFERENCE_PRECISION_HINT``; other OpenVINO users must pass it themselves.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras import fileio
from lps_keras.errors import UsageError
from lps_keras.export.common import BackendUnavailable, ExportError, OutputExistsError, check_choice
from lps_keras.latency.backends import get_backend

# The artefacts are what the latency backends of the same names time: their precisions are the table's.
LITERT_PRECISIONS = get_backend("litert").precisions
OPENVINO_PRECISIONS = get_backend("openvino").precisions
_OV_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 layers run in int8 whatever the hint

# pip package per importable module; all three are in requirements.txt.
_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "openvino": "openvino", "nncf": "nncf"}


def require_edge(fmt: str, precision: str) -> None:
    """Raise :class:`BackendUnavailable` naming the pip package when ``fmt`` at ``precision`` cannot be built."""
    modules = {"litert": ["ai_edge_litert"], "openvino": ["openvino"] + (["nncf"] if precision == "int8" else [])}
    for module in modules[fmt]:
        if importlib.util.find_spec(module) is None:
            raise BackendUnavailable(f"--{fmt} {precision} needs the {_PACKAGES[module]!r} package: "
                                     f"pip install {_PACKAGES[module]} (listed in requirements.txt)")


def artefact_path(out_dir, version: int, fmt: str, precision: str) -> Path:
    """``<out_dir>/<version>_litert_<precision>.tflite`` or ``<out_dir>/<version>_openvino_<precision>.xml``."""
    suffix = {"litert": ".tflite", "openvino": ".xml"}[fmt]
    return Path(out_dir) / f"{version}_{fmt}_{precision}{suffix}"


def write_network_savedmodel(deploy_model, directory, input_size) -> Path:
    """The bare network as a SavedModel (``model.export``): image [1, H, W, 3] float32 -> logits."""
    import tensorflow as tf

    h, w = (int(v) for v in input_size)
    directory = Path(directory)
    deploy_model.export(str(directory), format="tf_saved_model", verbose=False,
                        input_signature=[tf.TensorSpec((1, h, w, 3), tf.float32, name="image")])
    return directory


def network_predictor(saved_model_dir) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(x float32 [1,H,W,3]) -> logits`` of a :func:`write_network_savedmodel` SavedModel (fp32 TF)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))

    def predict(x):
        return np.asarray(loaded.serve(tf.constant(x, tf.float32)))

    predict._keepalive = loaded
    return predict


# --------------------------------------------------------------------------- LiteRT
def convert_litert(saved_model_dir, precision: str, calibration: Optional[np.ndarray] = None) -> bytes:
    """``.tflite`` bytes from the network SavedModel; ``calibration`` (float32 [N,H,W,3]) for int8."""
    import tensorflow as tf

    check_choice("litert precision", precision, LITERT_PRECISIONS)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ExportError("LiteRT int8 needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Input and output stay float32 (QUANTIZE/DEQUANTIZE at the ends), so callers feed the same
        # normalised image as every other format.
        converter.representative_dataset = lambda: ([np.asarray(x, np.float32)[None]] for x in calibration)
    try:
        return converter.convert()
    except Exception as e:  # noqa: BLE001 - converter errors are many types; name the step
        raise ExportError(f"LiteRT {precision} conversion of {saved_model_dir} failed: {type(e).__name__}: {e}") from e


def litert_predictor(path, threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(x) -> logits`` with ai-edge-litert's Interpreter (XNNPACK applied by default)."""
    require_edge("litert", "fp32")
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]

    def predict(x):
        it.set_tensor(inp["index"], np.asarray(x, inp["dtype"]))
        it.invoke()
        return it.get_tensor(out["index"]).copy()

    predict.input_shape = tuple(int(v) for v in inp["shape"])
    predict._keepalive = it
    return predict


# --------------------------------------------------------------------------- OpenVINO
def convert_openvino(saved_model_dir, precision: str, calibration: Optional[np.ndarray] = None):
    """An ``openvino.Model`` from the network SavedModel (NNCF int8 with ``calibration``)."""
    import openvino as ov

    check_choice("openvino precision", precision, OPENVINO_PRECISIONS)
    model = ov.convert_model(str(saved_model_dir))
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ExportError("OpenVINO int8 needs calibration images")
        import nncf

        items = [np.asarray(x, np.float32)[None] for x in calibration]
        model = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    model.set_rt_info(_OV_HINTS[precision], ["lps_keras", "inference_precision"])
    return model


def write_openvino(model, xml_path, precision: str) -> Path:
    """Save ``model`` as ``xml_path`` + ``.bin`` atomically (both staged, the ``.bin`` moved first).

    bf16 stores weights as fp16 (half the file, finer than the bf16 compute); fp32 and int8 keep
    ``ov.save_model``'s fp16 compression off so fp32 stays bit-exact.
    """
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temps(xml_path.parent)
    staging = Path(tempfile.mkdtemp(prefix=fileio.temp_prefix(xml_path.stem), dir=xml_path.parent))
    try:
        ov.save_model(model, str(staging / xml_path.name), compress_to_fp16=(precision == "bf16"))
        fileio.publish_tree(staging)
        os.replace(staging / xml_path.with_suffix(".bin").name, xml_path.with_suffix(".bin"))
        os.replace(staging / xml_path.name, xml_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return xml_path


def openvino_predictor(path, threads: Optional[int] = None, precision: Optional[str] = None):
    """``predict(x) -> logits`` on OpenVINO's CPU plugin at the IR's stored precision (or ``precision``).

    The one place an OpenVINO model is compiled for this project: the export's accuracy reports,
    the ``openvino`` latency backend and the edge benchmark all use it. The precision hint is always
    set explicitly (the CPU plugin defaults to bf16 where the CPU has it) and the performance hint
    is ``LATENCY`` (batch 1, one stream). ``predict.info`` holds the settings in force.
    """
    require_edge("openvino", "fp32")
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    hint = _OV_HINTS[precision] if precision else _stored_hint(model)
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    port = compiled.input(0)
    input_dtype = np.uint8 if port.get_element_type() == ov.Type.u8 else np.float32  # a serving graph takes uint8

    def predict(x):
        return np.array(request.infer([np.asarray(x, input_dtype)])[0])

    shape = model.inputs[0].get_partial_shape()
    predict.input_shape = tuple(int(d) for d in shape.to_shape()) if shape.is_static else None
    predict.input_dtype = input_dtype
    actual = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type: "f32" / "bf16"
    predict.hint = actual.get_type_name() if hasattr(actual, "get_type_name") else str(actual)
    predict.info = {"intra_op": int(compiled.get_property("INFERENCE_NUM_THREADS")),
                    "streams": int(compiled.get_property("NUM_STREAMS")), "precision_hint": predict.hint,
                    "cpu_count": os.cpu_count()}
    predict._keepalive = (core, compiled)
    return predict


def _stored_hint(model) -> str:
    if model.has_rt_info(["lps_keras", "inference_precision"]):
        value = model.get_rt_info(["lps_keras", "inference_precision"])
        return str(getattr(value, "value", value))  # an OVAny
    return "f32"  # not ours: measure it in fp32 rather than this CPU's bf16 default


def predictor(path, threads: Optional[int] = None):
    """The predictor for an artefact by its suffix: ``.tflite`` (LiteRT) or ``.xml`` (OpenVINO)."""
    path = Path(path)
    if path.suffix == ".tflite":
        return litert_predictor(path, threads)
    if path.suffix == ".xml":
        return openvino_predictor(path, threads)
    raise ExportError(f"{path}: not a LiteRT (.tflite) or OpenVINO (.xml) file")


# --------------------------------------------------------------------------- one artefact
def export_edge_artefact(saved_model_dir, out_dir, version: int, fmt: str, precision: str,
                         calibration: Optional[np.ndarray] = None, overwrite: bool = False) -> Path:
    """Convert and write one artefact beside the SavedModel version; returns its path."""
    target = artefact_path(out_dir, version, fmt, precision)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; choose another --version or pass --overwrite")
    if fmt == "litert":
        fileio.atomic_write_bytes(target, convert_litert(saved_model_dir, precision, calibration))
    elif fmt == "openvino":
        write_openvino(convert_openvino(saved_model_dir, precision, calibration), target, precision)
    else:
        raise UsageError(f"edge format must be litert or openvino, got {fmt!r}")
    return target


def artefact_size(path) -> int:
    """Bytes on disk (``.xml`` + ``.bin`` for OpenVINO)."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        size += path.with_suffix(".bin").stat().st_size
    return size


# --------------------------------------------------------------------------- what export.py runs
def check_edge_requests(requests) -> list[tuple[str, str]]:
    """Validate ``[(fmt, precision), ...]`` and the packages they need, before anything is exported."""
    requests = list(requests)
    for fmt, precision in requests:
        choices = {"litert": LITERT_PRECISIONS, "openvino": OPENVINO_PRECISIONS}.get(fmt)
        if choices is None:
            raise UsageError(f"edge format must be litert or openvino, got {fmt!r}")
        check_choice(f"--{fmt}", precision, choices)
        require_edge(fmt, precision)
    return requests


def export_edge(recipe, deploy_model, out_dir, version: int, requests, calibration_count: int = 100,
                eval_images: Optional[int] = None, overwrite: bool = False,
                log: Callable[[str], None] = print) -> dict:
    """Write each requested ``(fmt, precision)`` artefact beside ``<out_dir>/<version>`` with its accuracy report.

    The network SavedModel is staged in a temporary directory (it is the conversion source and the
    fp32 reference), the calibration set is read once for all int8 artefacts, and every artefact is
    run on the report images. Returns ``{"<fmt>_<precision>": report}``.
    """
    from lps_keras.export import edge_report as er

    requests = check_edge_requests(requests)
    if not requests:
        return {}
    size = er.edge_input_size(recipe)
    out_dir = Path(out_dir)
    for fmt, precision in requests:  # refuse before converting anything
        target = artefact_path(out_dir, version, fmt, precision)
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} already exists; choose another --version or pass --overwrite")
    calibration = None
    if any(p == "int8" for _, p in requests):
        calibration = er.calibration_images(recipe, size, calibration_count)
        log(f"int8 calibration: {len(calibration)} images of {recipe.data.dataset} split "
            f"{recipe.data.train_split!r} at {size[0]}x{size[1]}")
    images, labels, description = er.report_images(recipe, size, eval_images)
    num_classes = int(deploy_model.outputs[0].shape[-1])
    results = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    # Not inside out_dir: the writers there clear this process's own temporaries.
    with tempfile.TemporaryDirectory(prefix="lps_edge_network_") as tmp:
        source = write_network_savedmodel(deploy_model, Path(tmp) / "network", size)
        ref_logits = er.reference_logits(network_predictor(source), images)
        for fmt, precision in requests:
            t0 = time.perf_counter()
            target = export_edge_artefact(source, out_dir, version, fmt, precision, calibration, overwrite)
            convert_s = time.perf_counter() - t0
            report = {"artefact": str(target), "format": fmt, "precision": precision,
                      "size_bytes": artefact_size(target),
                      "input": f"image float32 [1,{size[0]},{size[1]},3] ImageNet-normalised",
                      "output": "logits float32 at the network's output size (upsample + argmax for labels)",
                      "reference": "fp32 SavedModel of the same deploy network (TensorFlow)",
                      "images_description": description, "convert_seconds": convert_s,
                      "calibration_images": len(calibration) if precision == "int8" else 0}
            report.update(er.accuracy_report(predictor(target), ref_logits, images, labels, num_classes))
            er.write_report(er.artefact_report_path(target), report)
            log(er.format_report(target.name, report))
            results[f"{fmt}_{precision}"] = report
    return results
