"""ONNX: tf2onnx conversion (align-corners resize kept) and onnxruntime parity."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lps_keras import fileio
from lps_keras.errors import UsageError
from lps_keras.export.common import ExportError


def _core_function(model, input_shape):
    import tensorflow as tf
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
    import tensorflow as tf
    import tf2onnx
    if opset < 13:
        raise UsageError(f"opset must be >= 13 (Resize with align_corners), got {opset!r}")
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
        fixed = resize_scales_to_sizes(model_proto)
        if fixed:
            import onnx

            onnx.save(model_proto, str(tmp))
        report = {"path": str(path), "opset": opset, "resize_modes": onnx_resize_modes(model_proto),
                  "resizes_given_sizes": fixed}
        if verify and keras_model is not None:
            report.update(onnx_parity(tmp, keras_model, input_shape, rtol=rtol))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return report


def resize_scales_to_sizes(model_proto) -> int:
    """Give every constant-``scales`` ``Resize`` of a static-shape graph its output ``sizes`` instead; in place.

    tf2onnx turns a ``ResizeBilinear`` to a constant size into ``Resize(scales=out/in)`` in float32.
    ONNX computes the output size as ``floor(in * scale)``, so 12 -> 34 (scale 2.8333333) becomes 33
    and onnxruntime refuses the graph ("Incompatible dimensions" at the interaction's Add): LPS-S at
    360x480 hits it. With ``align_corners`` the sampling depends only on the sizes, so giving
    ``round(in * scale)`` as ``sizes`` restores TensorFlow's graph exactly. Shapes are inferred again
    after each pass because a fixed Resize makes the next one's input shape known. Returns the count.
    """
    import onnx
    from onnx import numpy_helper

    graph = model_proto.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    fixed = 0
    for _ in range(len(graph.node)):
        inferred = onnx.shape_inference.infer_shapes(model_proto)
        shapes = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = [d.dim_value for d in dims]
        changed = False
        for node in graph.node:
            if node.op_type != "Resize" or len(node.input) != 3 or node.input[2] not in consts:
                continue
            modes = [a.s for a in node.attribute if a.name == "coordinate_transformation_mode"]
            if modes != [b"align_corners"]:
                continue  # elsewhere the scale itself enters the sampling
            in_shape = shapes.get(node.input[0])
            if in_shape is None:
                continue
            scales = consts[node.input[2]]
            sizes = np.rint(np.asarray(in_shape, np.float64) * scales).astype(np.int64)
            name = f"{node.name}__sizes"
            graph.initializer.append(numpy_helper.from_array(sizes, name))
            consts[name] = sizes
            node.input[2] = ""
            node.input.append(name)
            fixed += 1
            changed = True
        if not changed:
            break
    return fixed


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
