"""TF-TRT (TensorFlow 2.17 line + GPU) and TensorRT 10 engines; ``require_*`` say what to install.

:func:`require_tftrt` and :func:`require_tensorrt` raise :class:`BackendUnavailable` with the
requirements file to install, so a CLI can fail before spending minutes on an export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lps_keras import fileio
from lps_keras.export.common import BackendUnavailable, ExportError, OutputExistsError, check_choice, move_into_place
from lps_keras.latency.backends import get_backend

TFTRT_REQUIREMENTS = "requirements-tftrt.txt"
TENSORRT_REQUIREMENTS = "requirements-tensorrt.txt"


def tftrt_status() -> tuple[bool, str]:
    """(available, reason). TF-TRT needs a TensorFlow built and linked with TensorRT (<= 2.17)."""
    import tensorflow as tf

    from lps_keras.compat import tftrt_build_info

    enabled, reason, version = tftrt_build_info()
    if not enabled:
        return False, reason
    if not tf.config.list_physical_devices("GPU"):
        return False, "no GPU is visible to TensorFlow"
    return True, "TensorRT {}.{}.{} linked".format(*version)


def require_tftrt():
    ok, reason = tftrt_status()
    if not ok:
        raise BackendUnavailable(
            f"TF-TRT is not available: {reason}. TF-TRT was removed from TensorFlow 2.18+; install the "
            f"TensorFlow 2.17 + TensorRT 8.6 line from {TFTRT_REQUIREMENTS} on an NVIDIA GPU machine "
            f"(see the comments in that file) and run the export there.")


def convert_tftrt(saved_model_dir, out_dir, precision="fp16", input_shape=(1, 1024, 2048, 3),
                  signature="serving_default", overwrite=False, input_dtype="uint8") -> dict:
    """Convert a static-shape SavedModel with TF-TRT; build engines before saving.

    ``input_dtype`` is the signature's input type: ``uint8`` for :func:`export_savedmodel`'s
    serving graph, ``float32`` for the bare network the latency backend times.

    Runs only on the TF 2.17 line with a GPU (see ``requirements-tftrt.txt``). The converter
    replaces supported subgraphs with ``TRTEngineOp`` nodes; ``build()`` creates their engines for
    ``input_shape`` now so the first request does not pay for it. Raises :class:`ExportError` if no
    op was converted (a "TF-TRT model" without engines is just a slower SavedModel).
    """
    check_choice("precision", precision, get_backend("tftrt").precisions)  # what the tftrt backend times
    check_choice("input_dtype", input_dtype, ("uint8", "float32"))
    require_tftrt()
    import tensorflow as tf
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
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
        yield (tf.zeros(input_shape, input_dtype),)

    converter.build(input_fn=input_fn)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temps(out_dir.parent)
    staging = Path(tempfile.mkdtemp(prefix=fileio.temp_prefix("tftrt"), dir=out_dir.parent))
    try:
        converter.save(str(staging / "model"))
        move_into_place(staging / "model", out_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(out_dir), "trt_engine_ops": len(engines), "native_ops": len(native),
            "converted_share": share, "precision": precision, "input_shape": list(input_shape)}


def require_tensorrt():
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
    check_choice("precision", precision, get_backend("tensorrt").precisions)  # what the tensorrt backend times
    trt = require_tensorrt()
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
