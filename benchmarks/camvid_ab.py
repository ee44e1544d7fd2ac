"""Class-balance A/B on CamVid val (issue 23, item 2): the same recipe and schedule, one loss setting per arm.

    python benchmarks/camvid_ab.py --root runs/camvid_ab --iterations 1000 --seeds 0
    python benchmarks/camvid_ab.py --root runs/camvid_ab --summary-only --report docs/camvid_ab_balance.json

Each (arm, seed) trains with ``train.py`` in its own run directory under ``--root``; an interrupted run resumes
from its backup when the command is repeated, and finished runs are skipped, so the study can span sessions. The
report collects every finished run's val mIoU and per-class IoU (the thin classes pole, sign-symbol and fence are
what balancing is for) with the CPU's flags, since seconds are only comparable within one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One entry per arm: the recipe fields it sets (everything else comes from the recipe).
ARMS = {
    "ohem": {"train.loss": "ohem", "train.class_balance": "none"},  # the shipped v1 setting
    "ohem+enet": {"train.loss": "ohem", "train.class_balance": "enet"},
    "ce+median": {"train.loss": "ce", "train.class_balance": "median_frequency"},
    "ce+enet": {"train.loss": "ce", "train.class_balance": "enet"},
    "ce": {"train.loss": "ce", "train.class_balance": "none"},
    "ohem+median": {"train.loss": "ohem", "train.class_balance": "median_frequency"},
}
THIN = ("pole", "sign", "fence")


def run_dir(root: Path, arm: str, seed: int) -> Path:
    return root / f"{arm.replace('+', '_')}_s{seed}"


def overrides(arm: str, seed: int, iterations: int) -> list[str]:
    """The ``--set`` overrides of one (arm, seed) run, as ``train`` passes them."""
    return [f"train.iterations={iterations}", f"train.seed={seed}", f"train.val_interval={iterations}",
            "train.checkpoint_interval=100", *(f"{key}={value}" for key, value in ARMS[arm].items())]


def finished(directory: Path, iterations: int, recipe: str, arm: str, seed: int) -> dict | None:
    """The run's metrics when it finished ``iterations`` steps of this recipe, arm and seed; else None.

    A run directory trained from another ``--recipe`` (or an arm whose settings changed) is not this
    run: its settings are compared with the expected ones, so its figures are never reported as ours.
    """
    from lps_keras.recipe import load_recipe
    from lps_keras.train.trajectory import trajectory_record

    path = directory / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("final_step") != iterations:
        return None
    expected = load_recipe(recipe, overrides(arm, seed, iterations))
    try:
        ran = load_recipe(directory / "recipe.json")
    except Exception:  # noqa: BLE001 - an unreadable record cannot show the run is ours
        ran = None
    if ran is None or trajectory_record(ran) != trajectory_record(expected):
        raise SystemExit(f"camvid_ab: {directory} holds a run of other settings than {recipe} {arm} seed {seed}; "
                         "use another --root")
    return metrics


def train(recipe: str, directory: Path, arm: str, seed: int, iterations: int) -> None:
    command = [sys.executable, str(ROOT / "train.py"), "--recipe", recipe, "--run-dir", str(directory)]
    for item in overrides(arm, seed, iterations):
        command += ["--set", item]
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "ab_stdout.log", "a") as log:
        status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if status != 0:
        raise SystemExit(f"camvid_ab: {arm} seed {seed} failed (exit {status}); see {directory / 'ab_stdout.log'}")


def summarise(root: Path, arms: list[str], seeds: list[int], iterations: int, recipe: str) -> dict:
    from lps_keras.latency.stats import cpu_device, cpu_flags_text

    rows = []
    for arm in arms:
        runs = [m for s in seeds if (m := finished(run_dir(root, arm, s), iterations, recipe, arm, s))]
        if not runs:
            continue
        miou = [100 * m["miou"] for m in runs]
        thin = {c: [100 * m["per_class"][c]["iou"] for m in runs] for c in THIN}
        rows.append({
            "arm": arm, "settings": ARMS[arm], "seeds": len(runs), "miou": miou,
            "miou_mean": statistics.fmean(miou), "miou_sd": statistics.stdev(miou) if len(miou) > 1 else None,
            "pixel_accuracy": statistics.fmean(100 * m["pixel_accuracy"] for m in runs),
            "thin_iou": {c: statistics.fmean(v) for c, v in thin.items()},
            "per_class_iou": {c: statistics.fmean(100 * m["per_class"][c]["iou"] for m in runs)
                              for c in runs[0]["per_class"]},
            "images_per_second": statistics.fmean(m["images_per_second"] for m in runs),
        })
    return {"iterations": iterations, "seeds": seeds, "cpu": cpu_device(), "cpu_flags": cpu_flags_text(),
            "rows": rows}


def markdown(report: dict) -> str:
    lines = [f"{report['iterations']} iterations per run; {report['cpu_flags']}", "",
             "| arm | seeds | val mIoU | pixel acc | " + " | ".join(f"{c} IoU" for c in THIN) + " | images/s |",
             "|---|---|---|---|" + "---|" * len(THIN) + "---|"]
    for row in report["rows"]:
        sd = f" ± {row['miou_sd']:.2f}" if row["miou_sd"] is not None else ""
        thin = " | ".join(f"{row['thin_iou'][c]:.2f}" for c in THIN)
        lines.append(f"| {row['arm']} | {row['seeds']} | {row['miou_mean']:.2f}{sd} | {row['pixel_accuracy']:.2f} | "
                     f"{thin} | {row['images_per_second']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/camvid_lps_s_cpu.json")
    parser.add_argument("--root", type=Path, default=Path("runs/camvid_ab"))
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--report", type=Path, help="write the summary JSON here (and print the table)")
    parser.add_argument("--summary-only", action="store_true", help="train nothing; summarise finished runs")
    args = parser.parse_args(argv)
    if not args.summary_only:
        jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
        for index, (arm, seed) in enumerate(jobs, 1):
            directory = run_dir(args.root, arm, seed)
            if finished(directory, args.iterations, args.recipe, arm, seed):
                print(f"[{index}/{len(jobs)}] {arm} seed {seed}: done already", flush=True)
                continue
            print(f"[{index}/{len(jobs)}] {arm} seed {seed}: training in {directory}", flush=True)
            train(args.recipe, directory, arm, seed, args.iterations)
            metrics = finished(directory, args.iterations, args.recipe, arm, seed)
            print(f"[{index}/{len(jobs)}] {arm} seed {seed}: val mIoU {100 * metrics['miou']:.2f}", flush=True)
    report = summarise(args.root, args.arms, args.seeds, args.iterations, args.recipe)
    if args.report:
        tmp = args.report.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, args.report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
