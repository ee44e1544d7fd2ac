"""Pretrain LPS-Net's paths on ImageNet: ``python pretrain.py --recipe recipes/imagenet_lps_s.json``.

Trains the backbone as a classifier (global pooling and a dense head on each path's stage-5
features) on ``data.root``: a folder of class subfolders per split (``train/<class>/*.JPEG``,
``val/<class>/*.JPEG``) or, with ``--set data.source=tfds``, TFDS ``imagenet2012``'s manual-download
directory. Writes the run directory (default ``runs/<recipe name>``) with ``last.keras`` /
``best.keras`` (the classifier), ``backbone.keras`` and ``metrics.json``; then
``python train.py --recipe recipes/lps_s_strong.json --init runs/imagenet_lps_s/backbone.keras``.
Rerunning the same command after an interruption resumes from the last backup (``--no-resume`` starts over).
"""

from __future__ import annotations

import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="recipe JSON file, e.g. recipes/imagenet_lps_s.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set data.root=/data/imagenet (repeatable)")
    p.add_argument("--run-dir", default=None, help="output directory (--set train.run_dir=...)")
    p.add_argument("--data-root", default=None, help="class-folder root or TFDS manual directory (--set data.root=...)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="discard an existing backup in the run directory and start from step 0")
    p.add_argument("--iterations", type=int, default=None, help="--set train.iterations=...")
    return p.parse_args(argv)


def recipe_overrides(args) -> list[str]:
    """The flags as ``--set`` overrides of the recipe (the one way configuration enters)."""
    from lps_keras.cli import flag_overrides

    return flag_overrides(args.overrides, (("train.run_dir", args.run_dir), ("data.root", args.data_root),
                                           ("train.iterations", args.iterations)))


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("pretrain.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.cli import run_training_command
    from lps_keras.train import pretrain

    return run_training_command(
        "pretrain.py", args.recipe, recipe_overrides(args), lambda recipe: pretrain(recipe, resume=args.resume),
        lambda r: (f"done: val top-1 {100 * r['top1']:.2f} top-5 {100 * r['top5']:.2f} (best top-1 "
                   f"{100 * (r['best_top1'] or 0):.2f} at step {r['best_step']}), {r['wall_seconds']:.0f} s; "
                   f"backbone {r['backbone']}"))


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
