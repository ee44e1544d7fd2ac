"""Serving: the SavedModel's signatures, TF Serving's config and commands, and predicting with a SavedModel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
from lps_keras.errors import LPSError, UsageError
from lps_keras.export.common import check_choice
from lps_keras.export.precision import PRECISIONS, bf16_model
from lps_keras.fileio import atomic_write_text

OUTPUT_KINDS = ("probabilities", "logits")
#: How the exported graph holds the network's weights (``export_savedmodel(graph_weights=...)``).
WEIGHT_KINDS = ("constants", "variables")


def constant_network(net, input_shape=(None, None, None, 3)):
    """``net`` as one ``tf.function`` (float32 input of ``input_shape``, ``None`` for any size -> the network's
    output) whose weights are constants of its graph instead of variables.

    Why: TensorFlow's oneDNN convolutions (``TF_ENABLE_ONEDNN_OPTS=1``; TensorFlow turns them on by itself
    on CPUs with AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX) choose their weight layout by whether the
    filter is a constant. A constant filter is reordered
    once into the blocked layout of the fast direct kernel (``brg_conv_fwd``) and cached; a filter
    read from a variable stays in plain HWIO and gets the im2col + GEMM kernel, which ran LPS-S at
    1024x2048 2.1x slower in a TF1 session (TF Serving's executor) on an AVX2 CPU
    (docs/speed_tf_vs_onnxruntime.md); measured on that AVX2 CPU only. Without oneDNN (Eigen) the two
    forms run alike. The endpoints all call this one function, so the SavedModel stores each weight once.
    The weights live in the GraphDef, so a network over ~2 GB of weights needs ``graph_weights="variables"``.
    """
    import keras
    import tensorflow as tf

    shape = [None if v is None else int(v) for v in input_shape]
    trainable = [keras.ops.convert_to_numpy(v) for v in net.trainable_variables]
    non_trainable = [keras.ops.convert_to_numpy(v) for v in net.non_trainable_variables]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")], autograph=False)
    def network(x):
        outputs, _ = net.stateless_call([tf.constant(v) for v in trainable], [tf.constant(v) for v in non_trainable],
                                        x, training=False)
        return outputs

    return network


def serving_functions(deploy_model, input_size=None, outputs="probabilities", precision="fp32",
                      graph_weights="constants"):
    """The two serving ``tf.function``s (uint8 images, encoded bytes) and their input specs.

    Returns ``(network, (serve_images, spec), (serve_bytes, spec))``: ``network`` is the callable
    the endpoints run (float32 NHWC -> logits); with ``graph_weights="variables"`` it reads the Keras
    model's variables (track that model in the export), with ``"constants"`` it holds them as
    graph constants (:func:`constant_network`).
    """
    import tensorflow as tf

    from lps_keras.layers import resize_bilinear

    check_choice("outputs", outputs, OUTPUT_KINDS)
    check_choice("precision", precision, PRECISIONS)
    check_choice("graph_weights", graph_weights, WEIGHT_KINDS)
    model = bf16_model(deploy_model) if precision == "bf16" else deploy_model
    h, w = (None, None) if input_size is None else (int(input_size[0]), int(input_size[1]))
    if graph_weights == "constants":
        net = constant_network(model, (None, h, w, 3))
    else:
        def net(x):
            return model(x, training=False)
        net.model = model  # what the export tracks
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def heads(images):
        x = (tf.cast(images, tf.float32) / 255.0 - mean) / std
        logits = tf.cast(net(x), tf.float32)
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


#: Signature with the network's own logits, before the upsampling to the input size: predict.py takes
#: argmax of their upsampling in row bands, so a 48 MP photo never needs its full-size float scores.
NETWORK_LOGITS_SIGNATURE = "network_logits"


def network_logits_function(net, input_size=None):
    """The ``network_logits`` ``tf.function`` (uint8 images -> float32 logits at the network's output size).

    ``net``: the network callable :func:`serving_functions` returned (the bf16 copy for bf16), so the
    SavedModel stores its weights once.
    """
    import tensorflow as tf

    h, w = (None, None) if input_size is None else (int(input_size[0]), int(input_size[1]))
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def network_logits(images):
        x = (tf.cast(images, tf.float32) / 255.0 - mean) / std  # as in serving_functions' heads
        return {"logits": tf.cast(net(x), tf.float32)}

    return network_logits, tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")


class SavedModelError(LPSError):
    """A SavedModel directory that cannot be loaded (damaged or truncated files)."""


def load_savedmodel(model_dir, flag: str = "--model"):
    """``tf.saved_model.load(model_dir)``; a damaged SavedModel is one line naming the directory.

    TensorFlow reports a truncated ``variables.data-*`` file as ``IndexError: Read less bytes than
    requested`` from deep inside the loader, which says neither which model nor what is wrong.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "saved_model.pb").is_file():
        raise UsageError(f"{flag} {str(model_dir)!r} is not a SavedModel directory (no saved_model.pb)")
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(model_dir))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - the loader raises IndexError, DataLossError, DecodeError, ...
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        in_variables = (type(e).__name__ in ("IndexError", "DataLossError", "OutOfRangeError", "NotFoundError")
                        or "variables" in str(e).lower())
        what = "its variables (variables/) are damaged or truncated" if in_variables else \
            "saved_model.pb or its variables are damaged"
        raise SavedModelError(f"{model_dir}: the SavedModel cannot be loaded: {what} ({type(e).__name__}: "
                              f"{detail}); export it again") from None


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


def serving_commands(base_dir, name: str, image: str = "image.jpg", port: int = 8501, onednn: bool = True) -> dict:
    """The exact commands to serve ``base_dir`` and query it over REST.

    With ``onednn`` (for a graph whose weights are constants, export.py's default) both serve with
    ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow turns its oneDNN kernels on by itself only on CPUs with
    AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX, and with them TF's session over ONNX Runtime went from
    1.27-1.84 to 1.02-1.19 on an AVX2 CPU (docs/speed_tf_vs_onnxruntime.md). A graph holding
    variables gets oneDNN's slow kernel, so its commands leave the setting alone. A server built
    without oneDNN ignores the variable.
    """
    base = Path(base_dir).resolve()
    env = "TF_ENABLE_ONEDNN_OPTS=1 " if onednn else ""
    docker_env = "-e TF_ENABLE_ONEDNN_OPTS=1 " if onednn else ""
    payload = f'{{"signature_name": "serve_bytes", "instances": [{{"b64": "\'"$(base64 -w0 {image})"\'"}}]}}'
    return {
        "tensorflow_model_server": (f"{env}tensorflow_model_server --rest_api_port={port} "
                                    f"--model_config_file={base / 'models.config'}"),
        "docker": (f"docker run --rm -p {port}:8501 --mount type=bind,source={base},target=/models/{name} "
                   f"-e MODEL_NAME={name} {docker_env}-t tensorflow/serving"),
        "curl": (f"curl -s -X POST http://localhost:{port}/v1/models/{name}:predict "
                 f"-H 'Content-Type: application/json' "
                 f"-d '{payload}'"),
        "metadata": f"curl -s http://localhost:{port}/v1/models/{name}/metadata",
    }


def format_serving_commands(base_dir, name: str, onednn: bool = True) -> str:
    cmds = serving_commands(base_dir, name, onednn=onednn)
    return "\n".join([
        "Serve locally:", "  " + cmds["tensorflow_model_server"],
        "or with Docker:", "  " + cmds["docker"],
        "Query (REST, encoded image through serve_bytes):", "  " + cmds["curl"],
        "Signatures:", "  " + cmds["metadata"],
    ])


def predict_images(*args, **kwargs):
    """Moved to :func:`lps_keras.export.predict.predict_images` (kept here for existing imports)."""
    from lps_keras.export.predict import predict_images as predict

    return predict(*args, **kwargs)
