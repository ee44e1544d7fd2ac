"""Train LPS-Net from a recipe: ``python train.py --recipe recipes/demo.json [--set train.iterations=300]``.

Writes the run directory (default ``runs/<recipe name>``): resolved recipe, environment, TensorBoard
logs, ``best.keras`` / ``last.keras`` / ``deploy.keras`` and ``metrics.json``. Rerunning the same
command after an interruption resumes from the last backup (``--no-resume`` starts over).
"""

from __future__ import annotations

import argparse
import json
import sys


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
    overrides = list(args.overrides)
    for key, value in (("train.run_dir", args.run_dir), ("train.init", args.init),
                       ("train.iterations", args.iterations)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("train.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe, recipe_overrides(args))
    except RecipeError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2

    from lps_keras.data import DataError
    from lps_keras.train import NonFiniteLossError, TrainingError, train

    try:
        result = train(recipe, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"train.py: training stopped: {e}", file=sys.stderr)
        return 3
    except (TrainingError, RecipeError, DataError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train.py: interrupted; rerun the same command to resume from the last backup", file=sys.stderr)
        return 130
    print(f"done: val mIoU {100 * result['miou']:.2f} (best {100 * (result['best_miou'] or 0):.2f} at step "
          f"{result['best_step']}), {result['wall_seconds']:.0f} s; run dir {result['run_dir']}")
    return 0


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
