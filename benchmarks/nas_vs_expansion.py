"""Searched vs hand-designed networks on one device and one schedule (issue 27, item 3): per network its
config, params, GMACs, latency timed in one paired set, val mIoU per seed with mean ± sd, and the cost of
the search that found it, in one table.

    nice python benchmarks/nas_vs_expansion.py \\
        --entry "greedy expansion=savedmodels/camvid_expanded,docs/runs/camvid_expanded_s1" \\
        --entry "HMSeg search=docs/runs/hmseg_derived_s0,docs/runs/hmseg_derived_s1" \\
        --entry "TinyMRMS=docs/runs/camvid_tinymrms_proof_s0,docs/runs/camvid_tinymrms_proof_s1" \\
        --entry "Table 4 step 4=savedmodels/camvid_table4_step04,docs/runs/camvid_table4_step04_s1" \\
        --cost "greedy expansion=3.07" --cost "HMSeg search=docs/runs/hmseg_search_camvid/derived.json" \\
        --backend openvino --input-size 360x480 --output docs/nas_vs_expansion_camvid

An entry is ``LABEL=DIR[,DIR...]``: one finished training per seed, each a ``train.py`` run directory or a
shipped model's directory (``metrics.json`` and ``recipe.json``). The runs of one entry must train the same
network with different seeds, and every run the same data and schedule (every ``data.*`` and ``train.*`` field
of its recipe but those in :data:`NOT_SCHEDULE`: dataset, splits, subsets, augmentation, iterations, batch,
optimiser, loss, class balance, init), or the table would compare schedules; either is refused naming the run
and the field. The precision each run trained in is a column (``environment.json``'s policy; a shipped model
without one shows its recipe's setting). ``--cost LABEL=X`` gives the search cost in CPU-hours (wall hours
times the cores it had), a number or a search's ``derived.json`` (``search.py`` records its wall time and core
count); entries without one are hand-designed (cost 0). GMACs are counted at ``--input-size``, the size the
latencies are timed at.
All networks are timed together in interleaved rounds (:func:`lps_keras.latency.measure.measure_set`, the
first entry as the parent), so their latencies and differences share one measurement and machine-load drift
cancels. Writes ``OUTPUT.json`` and ``OUTPUT.md``; prints the table with the CPU's flags.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lps_keras.errors import UsageError  # noqa: E402 - after the path set-up above

# Recipe fields that may differ between the runs of one table: where the files are, how the run is logged
# and checkpointed, its seed, its precision (a column of its own) and how it was distributed.
NOT_SCHEDULE = ("data.root", "data.source", "data.shuffle_buffer", "data.skip_bad_files", "data.deterministic",
                "data.cache", "data.synthetic.", "train.seed", "train.run_dir", "train.val_interval",
                "train.checkpoint_interval", "train.log_interval", "train.image_summaries", "train.mixed_precision",
                "train.distribute")


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
        hours = float(value)
    except ValueError:
        path = Path(value)
        try:
            cost = json.loads(path.read_text())["cost"]
            hours = float(cost["wall_hours"]) * int(cost["cpu_count"])
        except FileNotFoundError:
            raise UsageError(f"--cost: {path}: no such file (a number of CPU-hours or a search's derived.json)") \
                from None
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--cost: {path}: no cost.wall_hours / cost.cpu_count in it ({e})") from None
    if not math.isfinite(hours) or hours < 0:
        raise UsageError(f"--cost {value!r}: {hours!r} CPU-hours; expected a finite number >= 0")
    return hours


def schedule_of(recipe) -> dict:
    """The recipe's data and training fields that make up its schedule (dotted names, see NOT_SCHEDULE)."""
    from lps_keras.recipe import dotted

    flat = dotted({"data": recipe.to_dict()["data"], "train": recipe.to_dict()["train"]})
    return {k: v for k, v in flat.items() if not k.startswith(NOT_SCHEDULE)}


def collect_entry(label: str, dirs: list[Path], size: tuple[int, int]) -> dict:
    """One network's figures over its seeds (GMACs at ``size``); refuses runs of different networks or
    repeated seeds."""
    from families_camvid import collect

    from lps_keras.families import family_of_config
    from lps_keras.recipe import load_recipe

    if not dirs:
        raise UsageError(f"--entry {label!r}: no run directory given")
    runs, configs, seeds, schedules = [], [], [], []
    for d in dirs:
        runs.append(collect(label, d))
        recipe = load_recipe(d / "recipe.json")
        configs.append(recipe.model_config())
        seeds.append(recipe.train.seed)
        schedules.append(schedule_of(recipe))
    for d, c in zip(dirs[1:], configs[1:]):
        if c != configs[0]:
            raise UsageError(f"{label}: {d} trains {c}, {dirs[0]} trains {configs[0]}; one network per entry")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"{label}: two runs share train.seed ({seeds}); one run per seed")
    miou = [r["miou"] for r in runs]
    summary = family_of_config(configs[0]).summary(configs[0], size)
    return {
        "label": label, "directories": [str(d) for d in dirs], "family": runs[0]["family"],
        "config": str(configs[0]), "params": summary["params_deploy"], "gmacs": summary["macs"] / 1e9,
        "gmacs_size": list(size), "schedule": runs[0]["schedule"],
        "schedules": schedules, "dtype_policy": [r["dtype_policy"] for r in runs],
        "seeds": seeds, "miou": miou, "miou_mean": statistics.fmean(miou),
        "miou_sd": statistics.stdev(miou) if len(miou) > 1 else None,
        "train_hours": [r["train_hours"] for r in runs], "_config": configs[0],
    }


def check_schedules(entries: list[dict]) -> None:
    """Every run against the first entry's first run: the same data and schedule (see NOT_SCHEDULE)."""
    ref, ref_dir = entries[0]["schedules"][0], entries[0]["directories"][0]
    for e in entries:
        for d, s in zip(e["directories"], e["schedules"]):
            diff = sorted(k for k in set(ref) | set(s) if s.get(k) != ref.get(k))
            if diff:
                raise UsageError(f"{d}: trains with {', '.join(f'{k} = {s.get(k)!r}' for k in diff)}, {ref_dir} "
                                 f"with {', '.join(repr(ref.get(k)) for k in diff)}; "
                                 "the table compares networks on one data set and schedule")


def table(entries: list[dict], backend: str, shape) -> str:
    head = ["network", "family", "config", "params", "GMACs", f"latency (ms, {backend} {shape[1]}×{shape[2]})",
            "ΔL vs first ± SE (ms)", "precision per seed", "val mIoU per seed", "mean ± sd", "search (CPU-h)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(e["miou_mean"] for e in entries)
    for e in entries:
        sd = f" ± {e['miou_sd']:.2f}" if e["miou_sd"] is not None else ""
        mean = f"{e['miou_mean']:.2f}{sd}"
        cells = [e["label"], e["family"], f"`{e['config']}`", f"{e['params'] / 1e6:.2f}M", f"{e['gmacs']:.2f}",
                 f"{e['latency_ms']:.3f}", f"{e['delta_ms']:+.3f} ± {e['delta_se_ms']:.3f}",
                 " / ".join(e["dtype_policy"]),
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
    shape = (1, *parse_size(args.input_size), 3)
    entries = []
    for item in args.entry:
        label, value = _split(item, "--entry")
        if any(e["label"] == label for e in entries):
            raise UsageError(f"--entry {label!r} given twice")
        if "|" in label:
            raise UsageError(f"--entry {label!r}: a label may not contain '|' (a table cell)")
        entries.append(collect_entry(label, [Path(v) for v in value.split(",") if v], shape[1:3]))
    costs = {}
    for item in args.cost:
        label, value = _split(item, "--cost")
        if label not in {e["label"] for e in entries}:
            raise UsageError(f"--cost {label!r}: no --entry of that label")
        if label in costs:
            raise UsageError(f"--cost {label!r} given twice")
        costs[label] = search_cost(value)
    check_schedules(entries)
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
    from lps_keras.cli import guarded, quiet_tensorflow

    args = parse_args(argv)
    quiet_tensorflow()
    return guarded("nas_vs_expansion.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
