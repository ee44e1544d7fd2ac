"""Searched vs hand-designed networks on one device and one schedule (issue 27, item 3): per network its
config, params, GMACs, latency timed in one paired set, val mIoU per seed with mean ± sd, and the cost of
the search that found it, in one table.

    nice python benchmarks/nas_vs_expansion.py \\
        --entry "greedy expansion=savedmodels/camvid_expanded,runs/item7/camvid_expanded_s1" \\
        --entry "HMSeg search=runs/hmseg_derived_s0,runs/hmseg_derived_s1" \\
        --entry "TinyMRMS=runs/camvid_tinymrms_proof_s0,runs/camvid_tinymrms_proof_s1" \\
        --entry "Table 4 step 4=savedmodels/camvid_table4_step04,runs/item7/camvid_table4_step04_s1" \\
        --cost "greedy expansion=3.07" --cost "HMSeg search=runs/hmseg_search_camvid/derived.json" \\
        --backend openvino --input-size 360x480 --output docs/nas_vs_expansion_camvid

An entry is ``LABEL=DIR[,DIR...]``: one finished training per seed, each a ``train.py`` run directory or a
shipped model's directory (``metrics.json`` and ``recipe.json``). The runs of one entry must train the same
network with different seeds, and every entry the same schedule (iterations, batch, lr, loss, crop, scale
range), or the table would compare schedules; either is refused naming the run. ``--cost LABEL=X`` gives the
search cost in CPU-hours (wall hours times the cores it had), a number or a search's ``derived.json``
(``search.py`` records its wall time and core count); entries without one are hand-designed (cost 0).
All networks are timed together in interleaved rounds (:func:`lps_keras.latency.measure.measure_set`, the
first entry as the parent), so their latencies and differences share one measurement and machine-load drift
cancels. Writes ``OUTPUT.json`` and ``OUTPUT.md``; prints the table with the CPU's flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lps_keras.errors import UsageError  # noqa: E402 - after the path set-up above

SCHEDULE_KEYS = ("iterations", "batch_size", "base_lr", "loss", "class_balance", "crop_size")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entry", action="append", required=True, metavar="LABEL=DIR[,DIR...]",
                   help="one network: its finished trainings, one directory per seed (repeat; the first is the "
                        "latency parent)")
    p.add_argument("--cost", action="append", default=[], metavar="LABEL=CPU_HOURS|derived.json",
                   help="the search cost of an entry (default: hand-designed, 0)")
    p.add_argument("--backend", default="openvino", help="latency backend (default openvino)")
    p.add_argument("--input-size", default="360x480", help="HEIGHTxWIDTH (default 360x480)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--iters-per-round", type=int, default=10, help="timed calls per network and round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--output", required=True, help="path prefix of the .json / .md written")
    return p.parse_args(argv)


def _split(item: str, what: str) -> tuple[str, str]:
    label, sep, value = item.partition("=")
    if not sep or not label or not value:
        raise UsageError(f"{what} {item!r}: expected LABEL=VALUE")
    return label, value


def search_cost(value: str) -> float:
    """CPU-hours from a number or from a search's ``derived.json`` (wall hours times its core count)."""
    try:
        return float(value)
    except ValueError:
        pass
    path = Path(value)
    try:
        cost = json.loads(path.read_text())["cost"]
        return float(cost["wall_hours"]) * int(cost["cpu_count"])
    except FileNotFoundError:
        raise UsageError(f"--cost: {path}: no such file (a number of CPU-hours or a search's derived.json)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--cost: {path}: no cost.wall_hours / cost.cpu_count in it ({e})") from None


def collect_entry(label: str, dirs: list[Path]) -> dict:
    """One network's figures over its seeds; refuses runs of different networks or repeated seeds."""
    from families_camvid import collect

    from lps_keras.recipe import load_recipe

    runs, configs, seeds = [], [], []
    for d in dirs:
        runs.append(collect(label, d))
        recipe = load_recipe(d / "recipe.json")
        configs.append(recipe.model_config())
        seeds.append(recipe.train.seed)
    for d, c in zip(dirs[1:], configs[1:]):
        if c != configs[0]:
            raise UsageError(f"{label}: {d} trains {c}, {dirs[0]} trains {configs[0]}; one network per entry")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"{label}: two runs share train.seed ({seeds}); one run per seed")
    miou = [r["miou"] for r in runs]
    return {
        "label": label, "directories": [str(d) for d in dirs], "family": runs[0]["family"],
        "config": str(configs[0]), "params": runs[0]["params"], "gmacs": runs[0]["gmacs"],
        "gmacs_size": runs[0]["gmacs_size"], "schedule": runs[0]["schedule"],
        "schedules": [r["schedule"] for r in runs], "dtype_policy": [r["dtype_policy"] for r in runs],
        "seeds": seeds, "miou": miou, "miou_mean": statistics.fmean(miou),
        "miou_sd": statistics.stdev(miou) if len(miou) > 1 else None,
        "train_hours": [r["train_hours"] for r in runs], "_config": configs[0],
    }


def check_schedules(entries: list[dict]) -> None:
    first = entries[0]
    for e in entries:
        for d, s in zip(e["directories"], e["schedules"]):
            diff = [k for k in SCHEDULE_KEYS if s.get(k) != first["schedule"].get(k)]
            if diff:
                raise UsageError(f"{d}: trains with {', '.join(f'{k} = {s.get(k)!r}' for k in diff)}, "
                                 f"{first['directories'][0]} with "
                                 f"{', '.join(repr(first['schedule'].get(k)) for k in diff)}; "
                                 "the table compares networks on one schedule")


def table(entries: list[dict], backend: str, shape) -> str:
    head = ["network", "family", "config", "params", "GMACs", f"latency (ms, {backend} {shape[1]}×{shape[2]})",
            "ΔL vs first ± SE (ms)", "val mIoU per seed", "mean ± sd", "search (CPU-h)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(e["miou_mean"] for e in entries)
    for e in entries:
        sd = f" ± {e['miou_sd']:.2f}" if e["miou_sd"] is not None else ""
        mean = f"{e['miou_mean']:.2f}{sd}"
        cells = [e["label"], e["family"], f"`{e['config']}`", f"{e['params'] / 1e6:.2f}M", f"{e['gmacs']:.2f}",
                 f"{e['latency_ms']:.3f}", f"{e['delta_ms']:+.3f} ± {e['delta_se_ms']:.3f}",
                 " / ".join(f"{m:.2f}" for m in e["miou"]),
                 f"**{mean}**" if e["miou_mean"] == best else mean, f"{e['search_cpu_hours']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args, measure=None) -> int:
    """``measure`` replaces :func:`measure_set` (tests pass one with stub runs and a fake clock)."""
    from lps_keras.fileio import atomic_write_json, atomic_write_text
    from lps_keras.latency.measure import measure_set
    from lps_keras.latency.stats import cpu_flags_text
    from lps_keras.recipe import parse_size

    measure = measure or measure_set
    entries = []
    for item in args.entry:
        label, value = _split(item, "--entry")
        if any(e["label"] == label for e in entries):
            raise UsageError(f"--entry {label!r} given twice")
        entries.append(collect_entry(label, [Path(v) for v in value.split(",") if v]))
    costs = {}
    for item in args.cost:
        label, value = _split(item, "--cost")
        if label not in {e["label"] for e in entries}:
            raise UsageError(f"--cost {label!r}: no --entry of that label")
        costs[label] = search_cost(value)
    check_schedules(entries)
    shape = (1, *parse_size(args.input_size), 3)
    print(f"timing {len(entries)} networks on {args.backend} fp32 {shape}, {args.rounds} rounds; {cpu_flags_text()}",
          flush=True)
    t0 = time.time()
    m = measure([e["_config"] for e in entries], backend=args.backend, input_shape=shape, rounds=args.rounds,
                iters_per_round=args.iters_per_round, warmup=args.warmup,
                progress=lambda r, n: print(f"  round {r}/{n}", flush=True))
    for i, e in enumerate(entries):
        del e["_config"]
        e.update(latency_ms=float(m.median_ms[i]), spread_ms=float(m.spread_ms[i]), delta_ms=float(m.delta_ms[i]),
                 delta_se_ms=float(m.delta_se_ms[i]), search_cpu_hours=costs.get(e["label"], 0.0))
    text = table(entries, args.backend, shape)
    doc = {"backend": args.backend, "precision": m.precision, "input_shape": list(shape), "rounds": m.rounds,
           "iters_per_round": m.iters_per_round, "device": m.device, "cpu": cpu_flags_text(),
           "versions": m.versions, "latency_minutes": round((time.time() - t0) / 60, 2), "entries": entries,
           "round_ms": m.round_ms.tolist()}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), doc)
    atomic_write_text(out.with_suffix(".md"), text + f"\n\n{cpu_flags_text()}\n")
    print(text)
    print(cpu_flags_text())
    return 0


def main(argv=None) -> int:
    from lps_keras.cli import guarded

    args = parse_args(argv)
    return guarded("nas_vs_expansion.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
