"""Latency table of model presets (LPS-Net by default, any family's): params, GMACs, ms per backend, GMAC/s.

    python benchmarks/latency.py [--input-size 1024x2048] [--iters 20] [--runs 2] [--output benchmarks/latency.json]

All columns (or the ``--columns`` chosen) are measured in one run, one model after another with the
same thread settings, so ratios between columns hold. Backends: ``tf`` fp32 and bf16 (the fused Keras deploy model as a
``tf.function``), ``tf_session`` (its static SavedModel in a TF1 session, as TF Serving runs it),
``onnxruntime`` (CPU EP) on our tf2onnx export of the same graph, and
``openvino`` fp32, bf16 and int8 (CPU plugin, IR converted from that ONNX file, precision hint set
explicitly; bf16 only where the CPU supports it, else a blank column with the reason; int8 through
NNCF calibrated on random images: the graph, hence the time, is what real calibration gives) and
``litert`` fp32 and int8 (ai-edge-litert with XNNPACK, from the static SavedModel). Each
figure is the median over ``--runs`` rounds (the whole table is measured once per round, so
the rounds are minutes apart), and the JSON keeps every round's median: this machine is noisy,
the spread between rounds says how much.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lps_keras.errors import UsageError  # noqa: E402 - after the path set-up above

PRESET_NAMES = ("lps_tiny", "lps_s", "lps_m", "lps_l")
COLUMNS = (("tf", "fp32"), ("tf", "bf16"), ("tf_session", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
           ("openvino", "bf16"), ("openvino", "int8"), ("litert", "fp32"), ("litert", "int8"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-size", default="1024x2048", help="HEIGHTxWIDTH (default 1024x2048)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=2, help="rounds over the whole table (the spread is reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (TF, onnxruntime, openvino)")
    p.add_argument("--inter-op", type=int, default=0,
                   help="TF inter-op threads (default 0 = TF's default, one per core: the independent "
                        "resolution paths of S/M/L then run concurrently; 1 serialises them)")
    p.add_argument("--presets", nargs="+", default=list(PRESET_NAMES),
                   help="presets of any family (default the LPS-Net ones; benchmarks/families.py compares families)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--columns", default="",
                   help="comma-separated backend_precision columns to measure (default: all of "
                        + ", ".join(f"{b}_{q}" for b, q in COLUMNS) + "); the others stay blank")
    p.add_argument("--output", default="benchmarks/latency.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.errors import LPSError
    from lps_keras.export import parse_size
    from lps_keras.families import family_of_preset
    from lps_keras.latency import set_tf_threads

    try:
        h, w = parse_size(args.input_size)
        if args.runs < 1 or args.iters < 1:
            raise UsageError(f"--runs and --iters must be >= 1, got {args.runs} and {args.iters}")
        known = [f"{b}_{q}" for b, q in COLUMNS]
        chosen = [c.strip() for c in args.columns.split(",") if c.strip()] or known
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise UsageError(f"--columns: unknown column {unknown[0]!r}; known: {', '.join(known)}")
        configs = {}  # any family's preset (pure: no TensorFlow yet), so a bad name is refused before timing
        for name in args.presets:
            configs[name] = family_of_preset(name).config(preset=name, num_classes=args.num_classes)
    except (ValueError, LPSError) as e:
        print(f"benchmarks/latency.py: error: {e}", file=sys.stderr)
        return 2
    threads = set_tf_threads(args.threads, args.inter_op)  # before any TF op runs, so it applies
    from lps_keras.latency import cpu_flags, cpu_flags_text, device_name, library_versions, measure_latency

    shape = (args.batch, h, w, 3)
    rows = []
    for name, config in configs.items():
        summary = family_of_preset(name).summary(config, (h, w))
        short = config.short() if hasattr(config, "short") else name
        rows.append({"preset": name, "arch": short, "params": summary["params_deploy"],
                     "gmacs": args.batch * summary["macs"] / 1e9})
    # an LPS-Net Arch's ONNX / IR is converted once, not per round (other families' configs: at every call)
    with tempfile.TemporaryDirectory(prefix="lps_bench_") as artifacts:
        for run in range(1, args.runs + 1):
            for i, row in enumerate(rows, start=1):
                arch = configs[row["preset"]]
                for backend, precision in COLUMNS:
                    col = f"{backend}_{precision}"
                    if col not in chosen:
                        continue
                    print(f"[round {run}/{args.runs}, {i}/{len(rows)}] {row['preset']} {col} ...", flush=True)
                    try:
                        s = measure_latency(arch, backend, shape, warmup=args.warmup, iters=args.iters,
                                            precision=precision, threads=args.threads, artifacts=artifacts)
                    except Exception as e:  # a missing backend is a blank column, not a failed table
                        row[f"{col}_error"] = f"{type(e).__name__}: {e}"
                        continue
                    row.setdefault(f"{col}_runs", []).append(s.median_ms)
                    row.setdefault(f"{col}_p90_runs", []).append(s.p90_ms)
                    if s.threads.get("precision_hint"):
                        row[f"{col}_precision_hint"] = s.threads["precision_hint"]
    for row in rows:
        for backend, precision in COLUMNS:
            col = f"{backend}_{precision}"
            runs = row.get(f"{col}_runs")
            row[col] = float(np.median(runs)) if runs else None
            if runs:
                row[f"{col}_spread"] = [min(runs), max(runs)]
                row[f"{col}_gmacs_per_s"] = row["gmacs"] / (row[col] / 1e3)

    versions = {**library_versions("tf"), **library_versions("onnxruntime")}
    for backend in ("openvino", "litert"):
        try:
            versions.update(library_versions(backend))
        except ImportError:
            pass
    result = {"input_shape": list(shape), "iters": args.iters, "warmup": args.warmup, "runs": args.runs,
              "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
              "device": device_name("tf"), "cpu_flags": cpu_flags(), "threads": threads, "versions": versions,
              "rows": rows}
    print()
    print(cpu_flags_text())
    print(format_table(result))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


def format_table(result) -> str:
    def ms(r, col):
        v, spread = r.get(col), r.get(f"{col}_spread")
        if v is None:
            return f"{'n/a':>17}"
        text = f"{v:.1f}" if not spread or spread[0] == spread[1] else f"{v:.1f} ({spread[0]:.1f}-{spread[1]:.1f})"
        return f"{text:>17}"

    def ratio(a, b):
        return f"{a / b:6.2f}" if a and b else f"{'n/a':>6}"

    n, h, w, _ = result["input_shape"]
    t = result["threads"]
    names = ("tf fp32", "tf bf16", "tf-sess fp32", "ort fp32", "ov fp32", "ov bf16", "ov int8", "litert fp32",
             "litert int8")
    lines = [f"{n}x{h}x{w} on {result['device']}, TF intra-op/inter-op threads {t['intra_op']}/{t['inter_op']} "
             f"(0 = TF default), median of {result['iters']} (ms), median over {result.get('runs', 1)} round(s) "
             f"(min-max of the rounds in brackets), TF_ENABLE_ONEDNN_OPTS={result.get('tf_enable_onednn_opts')}",
             f"{'model':9} {'params':>10} {'GMACs':>7} " + " ".join(f"{c:>17}" for c in names)
             + f" {'bf16/fp32':>9} {'tf/ort':>6} {'sess/ort':>8} {'tf/ov':>6} {'ov b/f':>6} {'best/tf':>7} "
             f"{'GMAC/s tf':>9}"]
    for r in result["rows"]:
        f32, b16, ort, sess = r.get("tf_fp32"), r.get("tf_bf16"), r.get("onnxruntime_fp32"), r.get("tf_session_fp32")
        ov32, ov16 = r.get("openvino_fp32"), r.get("openvino_bf16")
        eff = f"{r['tf_fp32_gmacs_per_s']:9.1f}" if f32 else f"{'n/a':>9}"
        cells = " ".join(ms(r, f"{b}_{p}") for b, p in COLUMNS)
        # The issue-15 target: the best CPU runtime against TF fp32 measured in the same run.
        others = [r.get(f"{b}_{p}") for b, p in COLUMNS if (b, p) != ("tf", "fp32")]
        best = min((v for v in others if v), default=None)
        lines.append(f"{r['preset']:9} {r['params']:>10,} {r['gmacs']:7.2f} {cells} {ratio(b16, f32):>9} "
                     f"{ratio(f32, ort)} {ratio(sess, ort):>8} {ratio(f32, ov32)} {ratio(ov16, ov32)} "
                     f"{ratio(best, f32):>7} {eff}")
    errors = {f"{r['preset']} {k[:-6]}": v for r in result["rows"] for k, v in r.items() if k.endswith("_error")}
    lines += [f"  {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
