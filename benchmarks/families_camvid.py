"""Same-data comparison of model families on CamVid (issue 25, item 4): val mIoU, the schedule, the
training time and the curves of finished runs, one table and one plot.

    python benchmarks/families_camvid.py \\
        --entry LPS-S=savedmodels/camvid_lps_s \\
        --entry NDNet45=runs/camvid_ndnet45_cpu --entry TinyMRMS=runs/camvid_tinymrms_cpu \\
        --output docs/families_camvid

An entry is ``LABEL=DIR``: a run directory of ``train.py`` (``metrics.json``, ``recipe.json``,
``environment.json``, ``train_log.jsonl``) or a shipped model's directory (``metrics.json`` and
``recipe.json`` beside its versions); or ``LABEL=EARLIER.json``: the entry of that label in an earlier
``OUTPUT.json`` of this script, for a run whose directory is gone (run directories are not kept with
the project; the table's figures are). Writes ``OUTPUT.json`` (per entry: recipe, schedule, precision,
params and GMACs at the recipe's export size, final and best val mIoU, per-class IoU, training hours,
the val curve), ``OUTPUT.md`` (the table) and ``OUTPUT.png`` (val mIoU against iteration and against
training hours). Nothing is trained or timed here; an unfinished run is refused, naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lps_keras.errors import UsageError  # noqa: E402 - after the path set-up above


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entry", action="append", required=True, metavar="LABEL=DIR",
                   help="a finished run directory, a shipped model directory, or an earlier OUTPUT.json "
                        "holding an entry of that label (repeat)")
    p.add_argument("--output", required=True, help="path prefix of the .json / .md / .png written")
    return p.parse_args(argv)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no {what} (is it a finished run?)") from None
    except ValueError as e:
        raise UsageError(f"{path}: unreadable {what} ({e})") from None


def earlier(label: str, path: Path) -> dict:
    """The entry ``label`` of an earlier ``OUTPUT.json`` of this script, unchanged."""
    found = [e for e in _read_json(path, "earlier table").get("entries", []) if e.get("label") == label]
    if not found:
        raise UsageError(f"{path}: no entry labelled {label!r} in this earlier table")
    return found[0]


def collect(label: str, directory: Path) -> dict:
    """One entry's figures from its run (or shipped model) directory, or from an earlier table."""
    if directory.suffix == ".json":  # an earlier table (a missing one is named as such)
        return earlier(label, directory)
    from lps_keras.recipe import load_recipe

    metrics = _read_json(directory / "metrics.json", "metrics.json")
    if metrics.get("final_step") != metrics.get("iterations"):
        raise UsageError(f"{directory}: the run stopped at step {metrics.get('final_step')} of "
                         f"{metrics.get('iterations')}; finish it first")
    recipe = load_recipe(directory / "recipe.json")
    config = recipe.model_config()
    from lps_keras.families import family_of_config

    family = family_of_config(config)
    h, w = recipe.export.input_size or recipe.data.augment.crop_size
    summary = family.summary(config, (h, w))
    env_path = directory / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    t = recipe.train
    entry = {
        "label": label, "directory": str(directory), "recipe": metrics.get("recipe"), "family": family.name,
        "params": summary["params_deploy"], "gmacs": summary["macs"] / 1e9, "gmacs_size": [h, w],
        "schedule": {"iterations": t.iterations, "batch_size": t.batch_size, "base_lr": t.base_lr, "loss": t.loss,
                     "class_balance": t.class_balance, "crop_size": list(recipe.data.augment.crop_size)},
        "dtype_policy": env.get("dtype_policy", t.mixed_precision),
        "miou": 100 * metrics["miou"], "best_miou": 100 * metrics["best_miou"], "best_step": metrics["best_step"],
        "pixel_accuracy": 100 * metrics["pixel_accuracy"],
        "per_class": {k: 100 * v["iou"] for k, v in (metrics.get("per_class") or {}).items()},
        "train_hours": metrics.get("fit_seconds", 0) / 3600, "images_per_second": metrics.get("images_per_second"),
        "val_steps": [h["step"] for h in metrics.get("history", []) if h.get("miou") is not None],
        "val_miou": [100 * h["miou"] for h in metrics.get("history", []) if h.get("miou") is not None],
    }
    if (directory / "train_log.jsonl").is_file() and (directory / "state.json").is_file():
        from lps_keras.curve import read_curve

        entry["val_hours"] = read_curve(directory)["val_hours"]
    if len(entry.get("val_hours", ())) != len(entry["val_miou"]):
        # a shipped model (or a published run without state.json) keeps no timed evaluations: place them
        # evenly over its training time
        entry["val_hours"] = [entry["train_hours"] * s / t.iterations for s in entry["val_steps"]]
    return entry


def table(entries: list[dict]) -> str:
    classes = list(entries[0]["per_class"])
    head = ["model", "family", "params", "GMACs", "schedule", "precision", "train h", "val mIoU", "best (step)",
            *classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        s = e["schedule"]
        sched = (f"{s['iterations']} it. × {s['batch_size']}, lr {s['base_lr']:g}, {s['loss']}"
                 + (f" + {s['class_balance']}" if s["class_balance"] != "none" else ""))
        gm = e["gmacs_size"]
        cells = [e["label"], e["family"], f"{e['params'] / 1e6:.2f}M", f"{e['gmacs']:.2f} ({gm[0]}×{gm[1]})", sched,
                 e["dtype_policy"], f"{e['train_hours']:.2f}", f"**{e['miou']:.1f}**",
                 f"{e['best_miou']:.1f} ({e['best_step']})",
                 *(f"{e['per_class'].get(c, float('nan')):.1f}" for c in classes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(entries: list[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lps_keras.fileio import atomic_path

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for e in entries:
        a1.plot(e["val_steps"], e["val_miou"], "o-", label=e["label"])
        a2.plot(e["val_hours"], e["val_miou"], "o-", label=e["label"])
    a1.set_xlabel("iteration")
    a2.set_xlabel("training hours (each on its own CPU; see the table)")
    a1.set_ylabel("val mIoU (%)")
    a1.legend()
    a1.set_title("CamVid val mIoU (101 images, 360×480)")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def main(argv=None) -> int:
    from lps_keras.cli import guarded

    args = parse_args(argv)
    return guarded("families_camvid.py", lambda: run(args))


def run(args) -> int:
    entries = []
    for item in args.entry:
        label, sep, directory = item.partition("=")
        if not sep or not label or not directory:
            raise UsageError(f"--entry {item!r}: expected LABEL=DIR")
        entries.append(collect(label, Path(directory)))
    from lps_keras.fileio import atomic_write_json, atomic_write_text

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), {"entries": entries})
    text = table(entries)
    atomic_write_text(out.with_suffix(".md"), text + "\n")
    plot(entries, out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
