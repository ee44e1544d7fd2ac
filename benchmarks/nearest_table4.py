"""Which of the paper's Table 4 networks is closest in latency to a given network, on this machine?

    python benchmarks/nearest_table4.py --recipe recipes/expanded/camvid_v3/step_05.json \\
        --backend openvino --input-size 360x480 --out docs/nearest_table4_camvid.json

The given network (a recipe's model: an expansion step's recipe, or any training recipe) and the 15
Table 4 rows, all with the recipe's number of classes, are timed together in interleaved rounds
(:func:`lps_keras.latency.measure.measure_set`, the given network as the parent), so every row's
difference to it carries its standard error and machine-load drift cancels. Prints the table with the
CPU's flags and the row nearest in paired difference |ΔL|; the JSON keeps every round's median. This is how
issue 22 item 7 picks the Table 4 row to train beside the expansion's final network ("the row closest
to it in this CPU's latency, same backend and size as the search"). Compare rows of one run only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lps_keras.errors import LPSError, UsageError  # noqa: E402 - after the path set-up above


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="a recipe whose model is the network to place among Table 4's")
    p.add_argument("--also", action="append", default=[], metavar="RECIPE",
                   help="another recipe's network to time in the same set (repeatable; e.g. every expansion step, "
                        "so their latencies share one measurement)")
    p.add_argument("--backend", default=None, help="latency backend (default: the recipe's search.latency_backend)")
    p.add_argument("--input-size", default=None,
                   help="HEIGHTxWIDTH (default: the recipe's search.latency_input_shape)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--iters-per-round", type=int, default=10, help="timed calls per network and round (default 10)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", required=True, help="JSON to write (atomically)")
    return p.parse_args(argv)


def nearest(deltas: dict) -> str:
    """The label whose paired difference to the given network is smallest in size (first in order on a tie)."""
    return min(deltas, key=lambda k: abs(deltas[k]))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from lps_keras.fileio import atomic_write_json
        from lps_keras.latency.measure import measure_set
        from lps_keras.latency.stats import cpu_flags_text
        from lps_keras.presets import TABLE4, get_preset
        from lps_keras.recipe import load_recipe, parse_size

        recipe = load_recipe(args.recipe)
        arch = recipe.arch()
        others = [load_recipe(path) for path in args.also]
        backend = args.backend or recipe.search.latency_backend
        shape = ((1, *parse_size(args.input_size), 3) if args.input_size
                 else tuple(recipe.search.latency_input_shape))
        labels = ["given"] + list(TABLE4) + [r.name for r in others]
        if len(set(labels)) != len(labels):
            raise UsageError(f"two networks share a name among --recipe/--also: {labels}")
        archs = ([arch] + [get_preset(name, arch.num_classes) for name in TABLE4]
                 + [r.arch(arch.num_classes) for r in others])
        print(f"timing {recipe.name} {arch}, the {len(TABLE4)} Table 4 rows and {len(others)} more, {backend} fp32 "
              f"{shape}, "
              f"{args.rounds} rounds; {cpu_flags_text()}", flush=True)
        t0 = time.time()
        m = measure_set(archs, backend=backend, input_shape=shape, rounds=args.rounds,
                        iters_per_round=args.iters_per_round, warmup=args.warmup,
                        progress=lambda r, n: print(f"  round {r}/{n}", flush=True))
    except LPSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    med = {lab: float(v) for lab, v in zip(labels, m.median_ms)}
    rows = []
    for i, lab in enumerate(labels):
        row = {"label": lab, "arch": str(archs[i]), "median_ms": med[lab], "spread_ms": float(m.spread_ms[i]),
               "delta_ms": float(m.delta_ms[i]), "delta_se_ms": float(m.delta_se_ms[i])}
        if lab in TABLE4:
            row.update(paper_step=TABLE4[lab].step, paper_latency_ms=TABLE4[lab].latency_ms,
                       paper_miou=TABLE4[lab].miou)
        rows.append(row)
    best = nearest({r["label"]: r["delta_ms"] for r in rows if r["label"] in TABLE4})
    print(f"{'network':22s} {'arch':44s} {'median ms':>9s} {'dL ms':>8s} {'+-SE':>6s}")
    for r in rows:
        mark = "  <- nearest" if r["label"] == best else ""
        print(f"{r['label'][:22]:22s} {r['arch'][:44]:44s} {r['median_ms']:9.3f} {r['delta_ms']:+8.3f} "
              f"{r['delta_se_ms']:6.3f}{mark}")
    print(f"nearest Table 4 row: {best} (step {TABLE4[best].step}); {cpu_flags_text()}")
    doc = {
        "recipe": str(args.recipe), "also": list(args.also), "backend": backend, "precision": m.precision,
        "input_shape": list(shape),
        "rounds": m.rounds, "iters_per_round": m.iters_per_round, "device": m.device, "cpu": cpu_flags_text(),
        "versions": m.versions, "minutes": round((time.time() - t0) / 60, 2), "nearest": best,
        "nearest_step": TABLE4[best].step, "rows": rows, "round_ms": m.round_ms.tolist(),
    }
    try:
        atomic_write_json(args.out, doc)
    except (LPSError, OSError) as e:
        print(f"error: could not write {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
