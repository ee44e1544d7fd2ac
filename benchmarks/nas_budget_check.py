"""Does the search's latency term work? One search per budget scale (e.g. 0.5x, 1x, 2x of one budget), and the
derived networks' measured latencies against their budgets (issue 27, item 4).

    nice python benchmarks/nas_budget_check.py --recipe recipes/hmseg_search_camvid.json \\
        --scales 0.5,1,2 --steps 1000 --set nas.arch_lr=0.003 --output runs/hmseg_budget_check

(``nas.arch_lr`` 3x the recipe's for a third of its steps: README, "HMSeg's differentiable search".)

The first scale's search builds the latency table (``<output>/x<scale>/latency_table.json``) and times the budget's
network (``budget.json``, which holds no scale); the others reuse both, so every search pairs a budget and a table
from one machine, also when the check spans sessions on different CPU kinds (the report says when its rows were
measured on different machines). Each derived network is timed in paired rounds beside the budget's network
(``nas.budget_arch``), so its ratio to the budget does not depend on how fast the machine was when the search began.
Every search resumes (rerun the command). Writes ``<output>/budget_check.json`` and ``.md``: scale, budget, the
table's latency of the derived network, its measured latency and ratio, within +-15 %, and whether the measured
latencies are in the budgets' order.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="search recipe (nas section, nas.budget_arch set)")
    p.add_argument("--scales", default="0.5,1,2", help="comma-separated budget scales (default 0.5,1,2)")
    p.add_argument("--steps", type=int, default=None, help="search steps of each (default nas.steps)")
    p.add_argument("--output", required=True, help="directory: one search per scale, the report")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    return p.parse_args(argv)


def report(rows: list[dict]) -> dict:
    """Within +-15 % of its budget per row; measured latencies in the budgets' order overall."""
    for r in rows:
        r["ratio"] = r["measured_ms"] / r["budget_now_ms"]
        r["within_15pct"] = abs(r["ratio"] - 1) <= 0.15
    by_budget = sorted(rows, key=lambda r: r["scale"])
    ordered = all(a["measured_ms"] < b["measured_ms"] for a, b in zip(by_budget, by_budget[1:]))
    return {"rows": rows, "ordered": ordered, "all_within_15pct": all(r["within_15pct"] for r in rows)}


def markdown(doc: dict) -> str:
    lines = ["| budget scale | budget (ms, now) | table (ms) | measured (ms) | measured / budget | within ±15% |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['scale']:g}× | {r['budget_now_ms']:.3f} | {r['table_ms']:.3f} | {r['measured_ms']:.3f} | "
                     f"{r['ratio']:.2f} | {'yes' if r['within_15pct'] else 'no'} |")
    lines += ["", f"Measured latencies in the budgets' order: {'yes' if doc['ordered'] else 'no'}."]
    if len(doc.get("devices", [])) > 1:  # each ratio is paired on its own machine; the order across rows is not
        lines.append(f"**The rows were measured on different machines** ({', '.join(doc['devices'])}): each "
                     "ratio holds, the order across rows does not compare like with like.")
    return "\n".join(lines)


def run(args) -> int:
    from lps_keras.errors import UsageError
    from lps_keras.fileio import atomic_write_json, atomic_write_text
    from lps_keras.nas.run import run_search
    from lps_keras.recipe import load_recipe

    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--scales must be comma-separated numbers, got {args.scales!r}") from None
    if not scales or any(s <= 0 for s in scales):
        raise UsageError(f"--scales must be positive numbers, got {args.scales!r}")
    out = Path(args.output)
    base = load_recipe(args.recipe, args.set)
    if base.nas.budget_arch is None:
        raise UsageError("nas.budget_arch: the check times each derived network beside the budget's network; "
                         "give the recipe a budget_arch")
    table = out / f"x{scales[0]:g}" / "latency_table.json"
    rows = []
    for i, scale in enumerate(scales):
        overrides = [*args.set, f"nas.budget_scale={scale}"]
        overrides += [f"nas.steps={args.steps}"] if args.steps else []
        overrides += [f"nas.latency_table={table}"] if i else []
        recipe = load_recipe(args.recipe, overrides)
        first_budget, budget = out / f"x{scales[0]:g}" / "budget.json", out / f"x{scale:g}" / "budget.json"
        if i and first_budget.exists() and not budget.exists():
            # The budget's network timed where the table was (it holds no scale): table and budget from one
            # machine, also when this scale's search starts in a later session on another CPU.
            budget.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first_budget, budget)
        print(f"== budget x{scale:g}", flush=True)
        derived = run_search(recipe, out / f"x{scale:g}", log=lambda line: print(line, flush=True))
        m = derived["measured"]
        rows.append({"scale": scale, "budget_now_ms": m["budget_now_ms"], "table_ms": derived["table_ms"],
                     "measured_ms": m["derived_ms"], "config": derived["config"], "device": m.get("device")})
    doc = report(rows)
    doc.update(recipe=args.recipe, overrides=args.set, steps=args.steps,
               devices=sorted({str(r["device"]) for r in rows}))
    atomic_write_json(out / "budget_check.json", doc)
    text = markdown(doc)
    atomic_write_text(out / "budget_check.md", text + "\n")
    print(text)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("nas_budget_check.py", lambda: run(args))


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
