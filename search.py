"""Differentiable latency-aware architecture search (HMSeg's) from a recipe's ``nas`` section.

Example (CamVid on this CPU, the budget = the greedy expansion's final network on OpenVINO):
    python search.py --recipe recipes/hmseg_search_camvid.json
    python train.py --recipe runs/hmseg_search_camvid/derived_recipe.json

The run directory (default ``runs/<recipe name>``) keeps the budget, the per-operator latency table
of this device, the search checkpoint and log, and the derived network (``derived.json``,
``derived_recipe.json``). Rerunning the same command resumes where it stopped.

Searching for another device (the target) than this machine: build the table there and carry it here:
    python search.py --recipe R --table-only --run-dir runs/table_target      # on the target device
    python search.py --recipe R --latency-table table_target.json --budget-ms MS   # here
--table-only prints the --budget-ms to give (the budget's network timed on the target, when the recipe has
nas.budget_arch). A table from another device is refused with nas.budget_arch (that network would be timed
here); the derived network's measured latency is labelled with the device it was timed on.
"""

from __future__ import annotations

import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="recipe JSON with a nas section and an MRMS model (the base)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set nas.steps=500 (repeatable)")
    p.add_argument("--run-dir", default=None, help="output directory (--set nas.run_dir=...)")
    p.add_argument("--steps", type=int, default=None,
                   help="--set nas.steps=... (fixed once a directory has searched: its schedules are sized by it)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget in ms (--set nas.budget_ms=...; replaces nas.budget_arch)")
    p.add_argument("--budget-scale", type=float, default=None, help="--set nas.budget_scale=... (e.g. 0.5, 2)")
    p.add_argument("--latency-table", default=None,
                   help="a latency table built on the target device (--set nas.latency_table=...); from another "
                        "device than this one it needs --budget-ms measured there")
    p.add_argument("--table-only", action="store_true",
                   help="stop after the budget and latency-table phases (run it on the target device, then search "
                        "anywhere with --latency-table)")
    return p.parse_args(argv)


def recipe_overrides(args) -> list[str]:
    from lps_keras.cli import flag_overrides

    given = ["nas.budget_arch=null"] if args.budget_ms is not None else []  # --budget-ms replaces the arch
    return flag_overrides(args.overrides + given, (
        ("nas.run_dir", args.run_dir), ("nas.steps", args.steps), ("nas.budget_ms", args.budget_ms),
        ("nas.budget_scale", args.budget_scale), ("nas.latency_table", args.latency_table)))


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("search.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.latency import check_backend
    from lps_keras.nas.run import needs_backend_here, run_search
    from lps_keras.recipe import load_recipe

    recipe = load_recipe(args.recipe, recipe_overrides(args))
    if needs_backend_here(recipe.nas):
        check_backend(recipe.nas.latency_backend)
    run_search(recipe, log=lambda line: print(line, flush=True), table_only=args.table_only)
    return 0


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
