"""Evaluate a model on a recipe's dataset: ``python evaluate.py --recipe R --weights W [--split val]``.

``W`` is a ``.keras`` model (training or deploy form), a ``.weights.h5``, official ``.pth``/``.npz``
weights or an exported SavedModel directory. Prints the per-class IoU table and the mIoU at full
label resolution; ``--save-predictions DIR`` also writes official-format PNGs and colour overlays.
"""

from __future__ import annotations

import argparse
import json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="recipe JSON file (dataset, classes, eval settings)")
    p.add_argument("--weights", required=True, help=".keras / .weights.h5 / .pth / .npz file or SavedModel directory")
    p.add_argument("--split", default="val", help="'val' (the recipe's val split), 'train', or a split name")
    p.add_argument("--save-predictions", default=None, metavar="DIR", help="write prediction PNGs here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field (repeatable)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON at the end")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("evaluate.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.evaluation import evaluate
    from lps_keras.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    result = evaluate(recipe, args.weights, split=args.split, save_predictions=args.save_predictions)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "per_class"}, indent=2))
    miou = result["miou"]
    print(f"mIoU {100 * miou:.2f}" if miou is not None else "mIoU: no labelled pixels")
    return 0


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
