"""How much memory does training add, against the up-front estimate (``lps_keras.train.memory``)?

    nice python benchmarks/train_memory.py --recipe recipes/demo.json --batches 2,8 \\
        --set model.arch=null --set model.family=mrms --set model.preset=tinymrms

Each batch size trains the recipe (with the ``--set`` overrides) for ``--iterations`` steps and one
validation in a fresh process, into a temporary run directory, and reports the peak resident memory the
run added (``getrusage`` peak minus the resident size just before ``train()``) beside
:func:`~lps_keras.train.memory.estimate_training_bytes` for the same run. These are the calibration
runs of the estimate's constants (module docstring there); run them again after a change to the
training step. Prints one row per batch with the CPU's flags; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lps_keras.errors import LPSError, UsageError  # noqa: E402 - after the path set-up above

# The child process: RSS before train(), the peak after it, in bytes, as one JSON line on stdout.
CHILD = """
import json, resource, sys
from lps_keras.recipe import load_recipe
from lps_keras.train import train
recipe = load_recipe(sys.argv[1], json.loads(sys.argv[2]))
rss = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
train(recipe, resume=False, verbose=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print('MEMORY ' + json.dumps({'before': rss, 'peak': peak}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("--batches", default="2,8", help="comma-separated batch sizes (default 2,8)")
    p.add_argument("--iterations", type=int, default=3, help="training steps per run (default 3)")
    p.add_argument("--json", default=None, help="write the rows here (atomically)")
    return p.parse_args(argv)


def measure(recipe_path: str, overrides: list[str]) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", CHILD, recipe_path, json.dumps(overrides)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY "):])
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["no message"]
    raise LPSError(f"the training run failed (exit {proc.returncode}): {last[0]}")


def main(argv=None) -> int:
    from lps_keras.cli import guarded, quiet_tensorflow

    args = parse_args(argv)
    quiet_tensorflow()
    return guarded("train_memory.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.fileio import atomic_write_json
    from lps_keras.latency.stats import cpu_flags_text
    from lps_keras.recipe import load_recipe
    from lps_keras.train.memory import estimate_training_bytes

    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise UsageError(f"--batches {args.batches!r}: expected comma-separated integers") from None
    if min(batches) < 1:
        raise UsageError(f"--batches {args.batches!r}: every batch size must be at least 1")
    recipe_path = str(Path(args.recipe).resolve())  # the child runs in the repository root
    rows = []
    print(cpu_flags_text(), flush=True)
    for batch in batches:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [*args.set, f"train.batch_size={batch}", f"train.iterations={args.iterations}",
                         f"train.val_interval={args.iterations}", f"train.checkpoint_interval={args.iterations}",
                         f"train.run_dir={tmp}/run"]
            recipe = load_recipe(recipe_path, overrides)
            config = recipe.model_config()
            h, w = recipe.data.augment.crop_size
            estimate = estimate_training_bytes(config, batch, h, w, config.num_classes)
            m = measure(recipe_path, overrides)
        added = m["peak"] - m["before"]
        row = {"model": f"{recipe.model.family} {recipe.model.preset or config}", "batch": batch, "crop": [h, w],
               "added_mb": added / 2**20, "estimate_mb": estimate / 2**20, "ratio": estimate / added}
        rows.append(row)
        print(f"{row['model'][:50]:50s} batch {batch:3d} {h}x{w}: added {row['added_mb']:7.0f} MB, "
              f"estimate {row['estimate_mb']:7.0f} MB (x{row['ratio']:.2f})", flush=True)
    if args.json:
        atomic_write_json(args.json, {"cpu": cpu_flags_text(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
