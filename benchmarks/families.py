"""The model families side by side on this machine: params, GMACs and latency per CPU backend.

    python benchmarks/families.py [--sizes 360x480,1024x2048] [--rounds 5] [--output benchmarks/families.json]

LPS-Net S/M/L and tiny, NDNet29/45/61 and MRMS/TinyMRMS (``--models`` to choose), each as its
fused deploy model with random weights (latency does not depend on the values). For every input
size and backend column all models are timed *interleaved* in one
:func:`lps_keras.latency.measure_set` (every round runs every model ``--iters-per-round`` times in a
shuffled order), so load drift on this shared machine hits them alike and the ratios between rows
hold. Each cell is the median over rounds; the JSON also keeps the robust spread. Params are the
count each family's paper reports (training form for NDNet and MRMS, deploy form for LPS-Net);
GMACs are the convolutions' multiply-accumulates at that size. The CPU's instruction-set flags are
printed with the table: compare ratios within one run, never absolute times across machines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("lps_tiny", "lps_s", "lps_m", "lps_l", "ndnet29", "ndnet45", "ndnet61", "mrms", "tinymrms")
COLUMNS = ("tf:fp32", "onnxruntime:fp32", "openvino:fp32", "openvino:int8", "litert:fp32", "litert:int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="360x480,1024x2048", help="comma-separated HEIGHTxWIDTH list")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated presets of any family")
    p.add_argument("--columns", default=",".join(COLUMNS), help="comma-separated backend:precision list")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters-per-round", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--output", default="benchmarks/families.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import quiet_tensorflow

    quiet_tensorflow()
    from lps_keras.errors import LPSError
    from lps_keras.export import parse_size
    from lps_keras.families import family_of_preset
    from lps_keras.fileio import atomic_write_json
    from lps_keras.latency import measure_set
    from lps_keras.latency.backends import get_backend
    from lps_keras.latency.stats import cpu_flags, cpu_flags_text

    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s]
        models = [m for m in args.models.split(",") if m]
        configs = [family_of_preset(m).config(preset=m, num_classes=args.num_classes) for m in models]
        columns = [tuple(c.split(":", 1)) if ":" in c else (c, "fp32") for c in args.columns.split(",") if c]
        for backend, _ in columns:
            get_backend(backend)
    except LPSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"CPU: {cpu_flags_text()}", flush=True)
    report = {"cpu": cpu_flags_text(), "cpu_flags": cpu_flags(), "threads": args.threads, "rounds": args.rounds,
              "iters_per_round": args.iters_per_round, "models": {}, "latency": {}}
    for name, config in zip(models, configs):
        family = family_of_preset(name)
        report["models"][name] = {"family": family.name, **{
            f"{h}x{w}": family.summary(config, (h, w)) for h, w in sizes}}
    for h, w in sizes:
        size = f"{h}x{w}"
        report["latency"][size] = {}
        for backend, precision in columns:
            col = f"{backend}:{precision}"
            t0 = time.time()
            try:
                m = measure_set(configs, backend, (1, h, w, 3), rounds=args.rounds,
                                iters_per_round=args.iters_per_round, precision=precision, threads=args.threads)
            except (LPSError, ImportError, RuntimeError) as e:  # a backend missing here: a blank column, with why
                report["latency"][size][col] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{size} {col}: not measured ({e})", flush=True)
                continue
            report["latency"][size][col] = {
                "median_ms": dict(zip(models, map(float, m.median_ms))),
                "spread_ms": dict(zip(models, map(float, m.spread_ms))),
                "device": m.device, "versions": m.versions}
            print(f"{size} {col}: {time.time() - t0:.0f} s", flush=True)
            atomic_write_json(Path(args.output), report)
    atomic_write_json(Path(args.output), report)
    print(format_table(report, models, sizes, [f"{b}:{p}" for b, p in columns]))
    return 0


def format_table(report, models, sizes, columns) -> str:
    lines = [f"CPU: {report['cpu']}"]
    for h, w in sizes:
        size = f"{h}x{w}"
        lines += ["", f"### {size}, batch 1, ms (median of {report['rounds']} interleaved rounds)", "",
                  "| model | family | params | GMACs | " + " | ".join(columns) + " |",
                  "|---|---|---|---|" + "---|" * len(columns)]
        for name in models:
            info = report["models"][name]
            s = info[size]
            cells = []
            for col in columns:
                entry = report["latency"][size].get(col, {})
                cells.append(f"{entry['median_ms'][name]:.1f}" if "median_ms" in entry else "–")
            lines.append(f"| {name} | {info['family']} | {s['params'] / 1e6:.2f}M | {s['macs'] / 1e9:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
