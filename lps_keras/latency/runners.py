"""How each backend loads a network or artefact into a timed call: ``runner(job) -> (run, thread_info)``.

Runners only prepare what is timed; :mod:`lps_keras.latency.measure` times it, the table in
:mod:`lps_keras.latency.backends` says which runner a backend uses, the cache only caches.

What is timed is the network the official LPS-Net latency script times: batch 1 (or the given N),
a float32 input of the full image size, logits out at the head's resolution; no normalisation, no
resize of the logits to the input size, no softmax and no argmax. Every ``run()`` ends with the
result on the host (``.numpy()``, a runtime's output array, or a stream synchronisation for
TensorRT).

For every backend but ``tf`` the deploy network first becomes the backend's artefact
(:mod:`.artifacts`: ONNX, OpenVINO IR, TF-TRT SavedModel, TensorRT engine, .tflite), cached per
(arch hash, backend, precision, input shape). The conversion step of ``tftrt``/``tensorrt`` and the
step that loads an artefact into a timed call are arguments of :class:`Job` (``convert``,
``load``), so their orchestration is tested on machines that cannot run TensorRT.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras.arch import Arch
from lps_keras.latency import artifacts as art
from lps_keras.latency.backends import check_backend
from lps_keras.latency.stats import LatencyError, set_tf_threads

#: ``load(artefact, input_shape, precision, threads) -> (run, thread_info)``: what the timing loop calls.
Loader = Callable[[Path, tuple, str, Optional[int]], tuple]


def random_deploy_model(arch):
    """The fused deploy model of ``arch`` (any family's config) with random weights, biases included.

    Fresh biases are zero, and converters fold a zero bias away (tf2onnx drops the ``Add``),
    which would time a cheaper graph than a trained network's.
    """
    from lps_keras.families import build

    return randomize_biases(build(arch, deploy=True))


def randomize_biases(model, seed: int = 0):
    """Give every bias of ``model`` random values (in place; returns it): what is timed is a trained-like graph.

    Shared with the single-operator models of a NAS latency table (:meth:`lps_keras.nas.space.SearchSpace.op_model`),
    so that operators and whole networks are timed in one form.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        if var.path.endswith("bias"):
            var.assign(rng.normal(0, 0.1, var.shape).astype(np.float32))
    return model


def is_model_config(target) -> bool:
    """True for an Arch or another family's config (what :func:`random_deploy_model` builds)."""
    from lps_keras.families import FAMILIES

    return any(isinstance(target, f.config_type) for f in FAMILIES.values())


def _as_keras_model(target, precision="fp32"):
    model = random_deploy_model(target) if is_model_config(target) else target
    if precision == "bf16":
        from lps_keras.export.precision import bf16_model

        model = bf16_model(model)
    return model


def arch_of(target) -> Optional[Arch]:
    if isinstance(target, Arch):
        return target
    arch = None if isinstance(target, (str, os.PathLike)) else getattr(target, "arch", None)
    return arch if isinstance(arch, Arch) else None  # models from build_model carry their Arch


@contextlib.contextmanager
def artifact_store(artifacts, target):
    """The store an Arch's artefacts go to (``artifacts``), or a temporary one removed afterwards."""
    if artifacts is not None and isinstance(target, Arch):
        yield artifacts if isinstance(artifacts, art.ArtifactStore) else art.ArtifactStore(artifacts)
        return
    with tempfile.TemporaryDirectory(prefix="lps_latency_") as tmp:
        yield art.ArtifactStore(tmp)


class Job:
    """One measurement: the target, its settings, and its artefacts (built on first use)."""

    def __init__(self, target, backend, input_shape, precision, threads, store, convert, load):
        self.target, self.backend, self.input_shape = target, backend, input_shape
        self.precision, self.threads, self.store = precision, threads, store
        self.convert, self.load = convert, load
        arch = arch_of(target)
        self.is_path = isinstance(target, (str, os.PathLike))
        self.ident = arch.hash if arch is not None else "target"
        self.label = (f"{arch} ({arch.hash})" if arch is not None
                      else str(target) if self.is_path else f"model {getattr(target, 'name', '?')}")
        self._model = None

    def model(self):
        if self._model is None:
            self._model = _as_keras_model(self.target)
        return self._model

    def artifact(self, kind: str, build: Callable[[Path], object], precision: str = "fp32") -> Path:
        return self.store.get_or_build(self.ident, f"{self.label} for the {self.backend} backend", kind, precision,
                                       self.input_shape, build, art.artifact_stamp(kind))

    def savedmodel(self) -> Path:
        return self.artifact("savedmodel", lambda out: art.write_static_savedmodel(self.model(), self.input_shape,
                                                                                   out))

    def onnx(self) -> Path:
        if self.is_path and str(self.target).endswith(".onnx"):
            return Path(self.target)
        if self.is_path:  # an exported SavedModel directory: its serving_default
            from lps_keras.export.onnx import export_onnx

            return self.artifact("onnx", lambda out: export_onnx(str(self.target), out, verify=False))
        return self.artifact("onnx", lambda out: art.write_onnx(self.model(), self.input_shape, out))

    def loader(self, default: Loader) -> Loader:
        return self.load or default


def _random_input(dtype, input_shape):
    rng = np.random.default_rng(0)
    if np.dtype(dtype) == np.uint8:  # an exported serving graph takes raw images
        return rng.integers(0, 256, input_shape, dtype=np.uint8)
    return rng.normal(0, 1, input_shape).astype(np.float32)


# --------------------------------------------------------------------------- loaders
def load_savedmodel(path, input_shape, precision="fp32", threads=None):
    """Time a SavedModel's ``serving_default`` (one input; uint8 or float32; outputs copied to host)."""
    thread_info = set_tf_threads(threads, None)
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    (name, spec), = fn.structured_input_signature[1].items()
    x = tf.constant(_random_input(spec.dtype.as_numpy_dtype, input_shape))

    def run():
        return {k: v.numpy() for k, v in fn(**{name: x}).items()}

    return run, thread_info


def load_savedmodel_session(path, input_shape, precision="fp32", threads=None):
    """Time a SavedModel's ``serving_default`` the way TF Serving runs it: loaded into a TF1 session
    (graph executor, grappler), not as a tf.function. ``threads`` sets both of the session's pools."""
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto()
    if threads:
        config.intra_op_parallelism_threads = config.inter_op_parallelism_threads = int(threads)
    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph, config=config)
    with graph.as_default():
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], str(path))
    sig = meta.signature_def["serving_default"]
    (inp,) = sig.inputs.values()
    outputs = [t.name for t in sig.outputs.values()]
    x = _random_input(tf.dtypes.as_dtype(inp.dtype).as_numpy_dtype, input_shape)

    def run():
        return sess.run(outputs, {inp.name: x})

    run._keepalive = sess
    return run, {"intra_op": config.intra_op_parallelism_threads or None,
                 "inter_op": config.inter_op_parallelism_threads or None, "cpu_count": os.cpu_count()}


def load_onnxruntime(path, input_shape, precision="fp32", threads=None):
    import onnxruntime as ort

    from lps_keras.latency.backends import onnxruntime_spinning

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    spinning = onnxruntime_spinning()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "on" else "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = _random_input(np.uint8 if "uint8" in inp.type else np.float32, input_shape)
    thread_info = {"intra_op": opts.intra_op_num_threads, "inter_op": opts.inter_op_num_threads,
                   "cpu_count": os.cpu_count(), "spinning": spinning}

    def run():
        return sess.run(None, {inp.name: x})

    return run, thread_info


def load_openvino(path, input_shape, precision="fp32", threads=None):
    """An OpenVINO IR compiled for the CPU by :func:`lps_keras.export.edge.openvino_predictor` (the one
    OpenVINO path), with ``precision``'s hint (``None``: the IR's stored precision)."""
    from lps_keras.export.edge import openvino_predictor

    predict = openvino_predictor(path, threads, precision)
    if predict.input_shape is not None:  # a static IR (export.py's) runs at its own size only
        check_static_shape(path, predict.input_shape, input_shape)
    x = _random_input(predict.input_dtype, input_shape if input_shape is not None else predict.input_shape)

    def run():
        return predict(x)  # the output is copied into a numpy array

    run._keepalive = predict
    return run, dict(predict.info)


def load_litert(path, input_shape, precision=None, threads=None):
    """A ``.tflite`` file in ai-edge-litert's Interpreter (XNNPACK); it runs at its stored precision.

    The file has a static input size (the one it was converted at); another ``input_shape`` is an
    error, not a silent resize.
    """
    from lps_keras.export.edge import litert_predictor

    path = Path(path)
    if path.suffix != ".tflite" or not path.is_file():
        raise LatencyError(f"the litert backend times a .tflite file (export.py --litert), got {str(path)!r}")
    predict = litert_predictor(path, threads)
    check_static_shape(path, predict.input_shape, input_shape)
    x = np.random.default_rng(0).normal(0, 1, predict.input_shape).astype(np.float32)

    def run():
        return predict(x)  # the predictor copies the output to a numpy array

    run._keepalive = predict
    return run, {"intra_op": threads, "inter_op": None, "cpu_count": os.cpu_count()}


def check_static_shape(path, stored_shape, input_shape) -> None:
    if input_shape is not None and tuple(input_shape) != tuple(stored_shape):
        raise LatencyError(f"{path} was exported for input {list(stored_shape)}, asked to time "
                           f"{list(input_shape)}; export it at that size (export.py --input-size)")


def load_tensorrt_engine(path, input_shape, precision="fp32", threads=None):
    """Deserialize a TensorRT 10 engine and time ``execute_async_v3`` up to ``cudaStreamSynchronize``."""
    from lps_keras.export.tensorrt import require_tensorrt

    trt = require_tensorrt()
    from cuda import cudart

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    context = engine.create_execution_context()
    _, stream = cudart.cudaStreamCreate()
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        if -1 in shape:
            shape = input_shape
            context.set_input_shape(name, shape)
        nbytes = int(np.prod(shape)) * np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
        _, ptr = cudart.cudaMalloc(nbytes)
        buffers.append(ptr)
        context.set_tensor_address(name, ptr)

    def run():
        context.execute_async_v3(stream)
        cudart.cudaStreamSynchronize(stream)

    run._keepalive = (engine, buffers)
    return run, {"intra_op": None, "inter_op": None}


# --------------------------------------------------------------------------- runners
def tf_runner(job: Job):
    if job.is_path:
        if job.precision != "fp32":
            raise LatencyError("an exported SavedModel runs at the precision it was exported with; "
                               "pass precision='fp32' (export a bf16 variant to time bf16)")
        return job.loader(load_savedmodel)(Path(job.target), job.input_shape, "fp32", job.threads)
    thread_info = set_tf_threads(job.threads, None)
    import tensorflow as tf

    from lps_keras.export.serving import constant_network

    model = _as_keras_model(job.target, job.precision)
    x = tf.constant(_random_input(np.float32, job.input_shape))
    # Weights as graph constants, as the exported SavedModel holds them: with oneDNN a variable filter
    # gets a 2x slower convolution kernel (lps_keras.export.serving.constant_network).
    forward = constant_network(model, job.input_shape)

    def run():
        return forward(x).numpy()  # host copy = device synchronisation

    return run, thread_info


def tf_session_runner(job: Job):
    """The static SavedModel (an Arch's or config's, or an exported directory) in a TF1 session (TF Serving's path)."""
    path = Path(job.target) if job.is_path else job.savedmodel()
    return job.loader(load_savedmodel_session)(path, job.input_shape, job.precision, job.threads)


def onnxruntime_runner(job: Job):
    return job.loader(load_onnxruntime)(job.onnx(), job.input_shape, "fp32", job.threads)


def openvino_runner(job: Job):
    # One fp32 IR serves fp32 and bf16 (the precision is a compile hint); int8 is its own graph.
    ir_precision = "int8" if job.precision == "int8" else "fp32"
    if job.is_path and (str(job.target).endswith(".xml")):
        ir = Path(job.target)
    else:
        source = job.target if job.is_path and not str(job.target).endswith(".onnx") else job.onnx()  # SavedModel
        ir = job.artifact("openvino", lambda out: art.write_openvino_ir(source, out, ir_precision, job.input_shape),
                          ir_precision)
    return job.loader(load_openvino)(ir, job.input_shape, job.precision, job.threads)


def tftrt_runner(job: Job):
    """TF-TRT: static-shape SavedModel -> ``convert`` (TrtGraphConverterV2) -> the converted SavedModel, timed."""
    if job.is_path:  # an already converted SavedModel: needs TF-TRT to run its TRTEngineOps
        if job.load is None:
            check_backend("tftrt", job.precision)
        return job.loader(load_savedmodel)(Path(job.target), job.input_shape, job.precision, job.threads)
    check_backend("tftrt", job.precision, converter=job.convert is None, runtime=job.load is None)
    convert = job.convert or art.convert_tftrt_default
    source = job.savedmodel()
    converted = job.artifact("tftrt", lambda out: convert(source, out, job.precision, job.input_shape),
                             job.precision)
    return job.loader(load_savedmodel)(converted, job.input_shape, job.precision, job.threads)


def tensorrt_runner(job: Job):
    """TensorRT 10: ONNX -> ``convert`` (engine builder) -> engine, timed with ``execute_async_v3``."""
    check_backend("tensorrt", job.precision, converter=job.convert is None, runtime=job.load is None)
    if job.is_path and str(job.target).endswith((".engine", ".plan")):
        engine = Path(job.target)
    elif job.is_path and not str(job.target).endswith(".onnx"):
        raise LatencyError(f"the tensorrt backend times an Arch, a Keras model, an .onnx or an .engine file, "
                           f"not {job.target}")
    else:
        convert = job.convert or art.build_tensorrt_default
        onnx = job.onnx()
        engine = job.artifact("tensorrt", lambda out: convert(onnx, out, job.precision, job.input_shape),
                              job.precision)
    return job.loader(load_tensorrt_engine)(engine, job.input_shape, job.precision, job.threads)


def litert_runner(job: Job):
    """LiteRT (XNNPACK): a ``.tflite`` file, or an Arch's static SavedModel converted at ``precision``.

    int8 is full-integer quantisation calibrated on random images: the graph, hence the time, is
    the one a real calibration gives (the scales differ, the work does not).
    """
    if job.is_path:
        return job.loader(load_litert)(job.target, job.input_shape, job.precision, job.threads)

    source = job.savedmodel()

    def build(out: Path):  # inside the store's staging directory, published whole
        from lps_keras.export.edge import convert_litert

        calibration = None
        if job.precision == "int8":
            calibration = np.random.default_rng(0).normal(0, 1, (8, *job.input_shape[1:])).astype(np.float32)
        out.write_bytes(convert_litert(source, job.precision, calibration))

    tflite = job.artifact("litert", build, job.precision)
    return job.loader(load_litert)(tflite, job.input_shape, job.precision, job.threads)
