"""Serving: the SavedModel's signatures, TF Serving's config and commands, and predicting with a SavedModel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
from lps_keras.errors import UsageError
from lps_keras.export.common import check_choice
from lps_keras.export.precision import PRECISIONS, bf16_model
from lps_keras.fileio import atomic_write_text

OUTPUT_KINDS = ("probabilities", "logits")


def serving_functions(deploy_model, input_size=None, outputs="probabilities", precision="fp32"):
    """The two serving ``tf.function``s (uint8 images, encoded bytes) and their input specs."""
    import tensorflow as tf

    from lps_keras.layers import resize_bilinear

    check_choice("outputs", outputs, OUTPUT_KINDS)
    check_choice("precision", precision, PRECISIONS)
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


def predict_images(model_dir, images, output, palette: str = "auto", alpha: float = 0.5, max_megapixels: float = 50.0,
                   log=print) -> list[Path]:
    """Segment image files with an exported SavedModel; write ``<stem>_mask.png`` and ``<stem>_overlay.png``.

    Only TensorFlow runs the model (its ``serving_default``), so any model written by
    :func:`~lps_keras.export.export_savedmodel` works. ``palette``: ``cityscapes``, ``camvid`` or
    ``auto`` (by class count: 19 -> cityscapes, 11 -> camvid, else generic colours). Every input is
    checked and decoded before anything runs; images over ``max_megapixels`` are refused from their
    header (a 50 MP image takes about 1 GB decoded), 16-bit ones scaled to 8 bits. Returns the written files.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "saved_model.pb").is_file():
        raise UsageError(f"--model {str(model_dir)!r} is not a SavedModel directory (no saved_model.pb)")
    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"image file(s) not found: {', '.join(map(repr, missing))}")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {alpha!r}")
    if palette not in ("auto", "cityscapes", "camvid"):
        raise UsageError(f"palette must be auto, cityscapes or camvid, got {palette!r}")
    if not max_megapixels > 0:
        raise UsageError(f"--max-megapixels must be > 0, got {max_megapixels!r}")
    from lps_keras.viz import read_rgb

    decoded = [read_rgb(p, max_pixels=int(max_megapixels * 1e6)) for p in paths]  # all decodable before anything runs

    import tensorflow as tf

    from lps_keras import viz

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    expected = fn.structured_input_signature[1]["images"].shape
    out_dir = Path(output)
    written = []
    for i, (path, image) in enumerate(zip(paths, decoded), start=1):
        if expected[1] is not None and tuple(image.shape[:2]) != (expected[1], expected[2]):
            image = tf.image.resize(image, (expected[1], expected[2]), antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()
            log(f"  {path}: resized to the model's static size {expected[1]}x{expected[2]}")
        out = fn(images=tf.constant(image[None]))
        labels = out["labels"][0].numpy()
        num_classes = int(out["probabilities" if "probabilities" in out else "logits"].shape[-1])
        dataset = {19: "cityscapes", 11: "camvid"}.get(num_classes) if palette == "auto" else palette
        colours = viz.get_palette(dataset, num_classes)  # generic colours if the named one has the wrong size
        mask = viz.save_png(out_dir / f"{path.stem}_mask.png", viz.colorize(labels, colours))
        over = viz.save_png(out_dir / f"{path.stem}_overlay.png", viz.overlay(image, labels, colours, alpha))
        log(f"[{i}/{len(paths)}] {path} -> {mask}, {over}")
        written += [mask, over]
    return written
