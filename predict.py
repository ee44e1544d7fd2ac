"""Segment images with an exported SavedModel and write colourised masks and overlays (PNG).

    python predict.py street.jpg more/*.png --model savedmodels/lps_s/1 --output predictions

Uses only TensorFlow to run the model (the SavedModel's ``serving_default``), so it works with any
model written by ``export.py``. For each IMAGE it writes ``<stem>_mask.png`` (class colours) and
``<stem>_overlay.png`` (colours blended onto the photo) into ``--output``.
"""

from __future__ import annotations

import argparse


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


def run(args) -> int:
    from lps_keras.export.predict import predict_images

    predict_images(args.model, args.images, args.output, palette=args.palette, alpha=args.alpha,
                   max_megapixels=args.max_megapixels, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
