"""Latency of the edge artefacts of one export against TF fp32 of the same network, interleaved.

    python benchmarks/edge.py --recipe recipes/camvid_lps_s_cpu.json --weights runs/camvid_lps_s_cpu/deploy.keras \\
        --export-dir runs/edge/camvid_lps_s [--version 1] [--rounds 20] [--per-round 5] [--threads 2]

Times the Keras deploy model (TF fp32, the reference of the accuracy reports) and every
``<version>_litert_*.tflite`` / ``<version>_openvino_*.xml`` that ``export.py --litert/--openvino``
wrote into ``--export-dir``, at the artefacts' static input size. The formats take turns: each
round runs every format ``--per-round`` times, so a change of background load on this shared
machine hits all of them alike and the ratios to TF fp32 stay meaningful. The median over all
rounds is the figure; sizes and the accuracy reports' agreement and mIoU change are printed beside
it and everything is written to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--weights", required=True, help="the weights the artefacts were exported from")
    p.add_argument("--export-dir", required=True, help="export.py --output directory holding the artefacts")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default="benchmarks/edge.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import quiet_tensorflow
    from lps_keras.latency.stats import set_tf_threads

    quiet_tensorflow()
    set_tf_threads(args.threads, None)
    import tensorflow as tf

    from lps_keras.latency.edge import artefact_backend, run_precision, stored_input_shape
    from lps_keras.latency.measure import prepared
    from lps_keras.latency.stats import cpu_flags, cpu_flags_text
    from lps_keras.recipe import load_recipe
    from lps_keras.weights import prepare_deploy_model

    export_dir = Path(args.export_dir)
    artefacts = sorted([*export_dir.glob(f"{args.version}_litert_*.tflite"),
                        *export_dir.glob(f"{args.version}_openvino_*.xml")])
    if not artefacts:
        print(f"benchmarks/edge.py: error: no {args.version}_litert_*.tflite or _openvino_*.xml in {export_dir}",
              file=sys.stderr)
        return 2
    runs, stack = {}, contextlib.ExitStack()  # each artefact loaded by its backend table entry's runner
    shape = stored_input_shape(artefacts[0], args.threads)
    for path in artefacts:
        run, _ = stack.enter_context(prepared(path, artefact_backend(path), stored_input_shape(path, args.threads),
                                              run_precision(path, args.threads), args.threads))
        runs[path.stem] = run
    _, deploy = prepare_deploy_model(load_recipe(args.recipe).model_config(), args.weights)
    x = tf.constant(np.random.default_rng(0).normal(0, 1, shape).astype(np.float32))
    forward = tf.function(lambda t: deploy(t, training=False))
    runs = {"tf_fp32": lambda: forward(x).numpy(), **runs}
    times = {k: [] for k in runs}
    for run in runs.values():  # warm-up: tracing, plugin compilation, delegate set-up
        for _ in range(3):
            run()
    for r in range(args.rounds):
        for name, run in runs.items():
            for _ in range(args.per_round):
                t0 = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t0) * 1e3)
        print(f"round {r + 1}/{args.rounds}", end="\r", flush=True)
    ref = float(np.median(times["tf_fp32"]))
    rows = []
    for name in runs:
        row = {"format": name, "median_ms": float(np.median(times[name])),
               "p90_ms": float(np.percentile(times[name], 90))}
        row["vs_tf_fp32"] = row["median_ms"] / ref
        if name != "tf_fp32":
            path = next(p for p in artefacts if p.stem == name)
            row["size_mb"] = sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.exists()) / 1e6
            report = export_dir / f"{name}_accuracy.json"
            if report.exists():
                acc = json.loads(report.read_text())
                row.update({k: acc.get(k) for k in ("label_agreement", "miou_change_points", "miou", "miou_reference")})
        rows.append(row)
    print()
    print(cpu_flags_text())
    print(f"input {list(shape)}, {args.threads} threads, {args.rounds} rounds x {args.per_round} runs, interleaved")
    print(f"{'format':22} {'ms':>8} {'vs tf':>6} {'MB':>6} {'agree':>8} {'dmIoU':>7}")
    for r in rows:
        agree = f"{100 * r['label_agreement']:.2f}%" if r.get("label_agreement") is not None else "-"
        dmiou = f"{r['miou_change_points']:+.2f}" if r.get("miou_change_points") is not None else "-"
        size = f"{r['size_mb']:.1f}" if "size_mb" in r else "-"
        print(f"{r['format']:22} {r['median_ms']:8.2f} {r['vs_tf_fp32']:6.2f} {size:>6} {agree:>8} {dmiou:>7}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from lps_keras.fileio import atomic_write_text

    atomic_write_text(out, json.dumps({"input_shape": list(shape), "threads": args.threads, "rounds": args.rounds,
                                       "per_round": args.per_round, "cpu_flags": cpu_flags(), "rows": rows},
                                      indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
