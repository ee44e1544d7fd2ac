"""Segment images with an exported SavedModel and write colourised masks and overlays (PNG).

    python predict.py street.jpg more/*.png --model savedmodels/lps_s/1 --output predictions

Uses only TensorFlow to run the model, so it works with any model written by ``export.py``. For each
IMAGE it writes ``<name>_mask.png`` (class colours) and ``<name>_overlay.png`` (colours blended onto
the photo) into ``--output``. ``<name>`` is the file's stem; inputs that share a stem (``a/x.png``,
``b/x.png``) are named by their path below their common directory (``a_x``, ``b_x``), so no output
replaces another. A directory given as IMAGE stands for its image files (.png .jpg .jpeg .bmp .webp
.tif .tiff, not its subdirectories), in name order.

Memory: labels come from the SavedModel's ``network_logits`` signature, upsampled and reduced to
labels a band of rows at a time (models exported before it existed use ``serving_default``, which
holds the full-size class scores: several GB for a 48-megapixel photo).
"""

from __future__ import annotations

import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="JPEG/PNG files, or directories of them; equal stems get their parent directories in the "
                   "output name")
    p.add_argument("--model", required=True, help="SavedModel version directory, e.g. savedmodels/lps_s/1")
    p.add_argument("--output", default="predictions", help="directory for the PNGs (default: predictions)")
    p.add_argument("--palette", choices=("cityscapes", "camvid", "auto"), default="auto",
                   help="colours (default: by class count, 19 -> cityscapes, 11 -> camvid)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    p.add_argument("--no-legend", dest="legend", action="store_false",
                   help="leave out the legend strip (colour and name of each class present) below the overlay")
    p.add_argument("--max-megapixels", type=float, default=50.0,
                   help="refuse larger images from their header (default 50). Decoding costs only 3 bytes a "
                   "pixel (150 MB at 50 MP); running the network costs more (its float input alone is 12 bytes a "
                   "pixel): a 48 MP photo peaked at 2.1 GB with lps_tiny, more with larger models")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("predict.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.export.predict import predict_images

    predict_images(args.model, args.images, args.output, palette=args.palette, alpha=args.alpha, legend=args.legend,
                   max_megapixels=args.max_megapixels, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
