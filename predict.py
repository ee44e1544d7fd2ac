"""Segment images with an exported SavedModel and write colourised masks and overlays (PNG).

    python predict.py street.jpg more/*.png --model savedmodels/lps_s/1 --output predictions

Uses only TensorFlow to run the model (the SavedModel's ``serving_default``), so it works with any
model written by ``export.py``. For each IMAGE it writes ``<stem>_mask.png`` (class colours) and
``<stem>_overlay.png`` (colours blended onto the photo) into ``--output``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG files")
    p.add_argument("--model", required=True, help="SavedModel version directory, e.g. savedmodels/lps_s/1")
    p.add_argument("--output", default="predictions", help="directory for the PNGs (default: predictions)")
    p.add_argument("--palette", choices=("cityscapes", "camvid", "auto"), default="auto",
                   help="colours (default: by class count, 19 -> cityscapes, 11 -> camvid)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    p.add_argument("--max-megapixels", type=float, default=50.0,
                   help="refuse larger images (default 50; decoding a 50 MP image takes about 1 GB)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("predict.py", lambda: run(args))


def _read_rgb(path: Path, max_megapixels: float):
    from lps_keras.viz import read_rgb

    return read_rgb(path, max_pixels=int(max_megapixels * 1e6))


def run(args) -> int:
    model_dir = Path(args.model)
    if not (model_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(f"--model {str(model_dir)!r} is not a SavedModel directory (no saved_model.pb)")
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(map(repr, missing))}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha!r}")
    if not args.max_megapixels > 0:
        raise ValueError(f"--max-megapixels must be > 0, got {args.max_megapixels!r}")
    images = [_read_rgb(p, args.max_megapixels) for p in paths]  # all decodable before anything runs

    import tensorflow as tf

    from lps_keras import viz

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    expected = fn.structured_input_signature[1]["images"].shape
    out_dir = Path(args.output)
    for i, (path, image) in enumerate(zip(paths, images), start=1):
        if expected[1] is not None and tuple(image.shape[:2]) != (expected[1], expected[2]):
            image = tf.image.resize(image, (expected[1], expected[2]), antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()
            print(f"  {path}: resized to the model's static size {expected[1]}x{expected[2]}")
        out = fn(images=tf.constant(image[None]))
        labels = out["labels"][0].numpy()
        num_classes = int(out["probabilities" if "probabilities" in out else "logits"].shape[-1])
        dataset = {19: "cityscapes", 11: "camvid"}.get(num_classes) if args.palette == "auto" else args.palette
        palette = viz.get_palette(dataset, num_classes)  # generic colours if the named one has the wrong size
        mask = viz.save_png(out_dir / f"{path.stem}_mask.png", viz.colorize(labels, palette))
        over = viz.save_png(out_dir / f"{path.stem}_overlay.png", viz.overlay(image, labels, palette, args.alpha))
        print(f"[{i}/{len(paths)}] {path} -> {mask}, {over}", flush=True)
    return 0


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
