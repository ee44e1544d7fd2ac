"""Train LPS-Net from a recipe: ``python train.py --recipe recipes/demo.json [--set train.iterations=300]``.

Writes the run directory (default ``runs/<recipe name>``): resolved recipe, environment, TensorBoard
logs, ``best.keras`` / ``last.keras`` / ``deploy.keras`` and ``metrics.json``. Rerunning the same
command after an interruption resumes from the last backup (``--no-resume`` starts over).
"""

from __future__ import annotations

import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="recipe JSON file, e.g. recipes/demo.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.batch_size=8 (repeatable)")
    p.add_argument("--run-dir", default=None, help="output directory (--set train.run_dir=...)")
    p.add_argument("--init", default=None,
                   help="start from a .keras checkpoint or official weights (.pth/.npz) (--set train.init=...)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="discard an existing backup in the run directory and start from step 0")
    p.add_argument("--iterations", type=int, default=None, help="--set train.iterations=...")
    return p.parse_args(argv)


def recipe_overrides(args) -> list[str]:
    """The flags as ``--set`` overrides of the recipe (the one way configuration enters)."""
    from lps_keras.cli import flag_overrides

    return flag_overrides(args.overrides, (("train.run_dir", args.run_dir), ("train.init", args.init),
                                           ("train.iterations", args.iterations)))


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("train.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.cli import run_training_command
    from lps_keras.train import train

    return run_training_command(
        "train.py", args.recipe, recipe_overrides(args), lambda recipe: train(recipe, resume=args.resume),
        lambda r: (f"done: val mIoU {100 * r['miou']:.2f} (best {100 * (r['best_miou'] or 0):.2f} at step "
                   f"{r['best_step']}), {r['wall_seconds']:.0f} s; run dir {r['run_dir']}"))


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
