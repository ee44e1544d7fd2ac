"""The training curve of a run directory as a PNG: loss and val mIoU against step and wall time.

    python -m lps_keras.curve runs/camvid_lps_s_cpu docs/camvid_lps_s_cpu_curve.png

Reads what :func:`lps_keras.train.train` writes: ``train_log.jsonl`` (loss, learning rate and wall
clock every ``log_interval`` steps) and ``state.json`` (every validation). The same numbers are in
the run's TensorBoard logs; this is the picture for a README.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lps_keras.errors import UsageError
from lps_keras.fileio import atomic_path


def read_curve(run_dir) -> dict:
    """``{"steps", "loss", "lr", "hours", "val_steps", "val_miou", "val_hours"}`` of a run directory.

    ``hours`` is the wall time since the first logged step, across resumes (time spent while the
    run was stopped is not counted: gaps longer than ten logging intervals are closed).
    """
    run_dir = Path(run_dir)
    log_path, state_path = run_dir / "train_log.jsonl", run_dir / "state.json"
    if not log_path.is_file():
        raise UsageError(f"{log_path}: no training log (is {run_dir} a run directory?)")
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: r["step"])
    steps = [int(r["step"]) for r in records]
    hours, elapsed = [], 0.0
    for i, r in enumerate(records):
        if i:
            dt = r["time"] - records[i - 1]["time"]
            typical = (r["step"] - records[i - 1]["step"]) / max(r.get("steps_per_s") or 1e-9, 1e-9)
            elapsed += dt if dt < 10 * typical + 60 else typical  # a resume gap counts as one interval
        hours.append(elapsed / 3600.0)
    history = json.loads(state_path.read_text()).get("history", []) if state_path.is_file() else []
    val = [h for h in history if h.get("miou") is not None]

    def hours_at(step):
        if not steps:
            return 0.0
        i = min(range(len(steps)), key=lambda j: abs(steps[j] - step))
        return hours[i]

    return {
        "steps": steps, "loss": [float(r["loss"]) for r in records], "lr": [float(r["lr"]) for r in records],
        "hours": hours, "val_steps": [int(h["step"]) for h in val], "val_miou": [100.0 * h["miou"] for h in val],
        "val_hours": [hours_at(int(h["step"])) for h in val],
    }


def plot_curve(run_dir, out_png, title: str | None = None) -> Path:
    """Write the curve of ``run_dir`` to ``out_png`` (atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = read_curve(run_dir)
    fig, ax1 = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax1.plot(c["steps"], c["loss"], color="tab:blue", lw=1, label="training loss")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(c["val_steps"], c["val_miou"], "o-", color="tab:red", label="val mIoU")
    for s, m, h in zip(c["val_steps"], c["val_miou"], c["val_hours"]):
        ax2.annotate(f"{m:.1f}\n{h:.2f} h", (s, m), textcoords="offset points", xytext=(0, 6), ha="center",
                     fontsize=7)
    ax2.set_ylabel("val mIoU (%)", color="tab:red")
    ax1.set_title(title or Path(run_dir).name)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("output", help="PNG file to write")
    p.add_argument("--title")
    args = p.parse_args(argv)
    try:
        print(plot_curve(args.run_dir, args.output, args.title))
    except (OSError, ValueError, KeyError) as e:
        print(f"curve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
