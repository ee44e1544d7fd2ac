"""Latency table of the LPS-Net presets on this machine: params, GMACs, ms per backend, GMAC/s.

    python benchmarks/latency.py [--input-size 1024x2048] [--iters 20] [--output benchmarks/latency.json]

All columns are measured in one run, one model after another with the same thread settings, so
ratios between columns hold. Backends: ``tf`` fp32 and bf16 (the fused Keras deploy model as a
``tf.function``) and ``onnxruntime`` (CPU EP) on our tf2onnx export of the same graph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESET_NAMES = ("lps_tiny", "lps_s", "lps_m", "lps_l")
COLUMNS = (("tf", "fp32"), ("tf", "bf16"), ("onnxruntime", "fp32"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-size", default="1024x2048", help="HEIGHTxWIDTH (default 1024x2048)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (TF and onnxruntime)")
    p.add_argument("--inter-op", type=int, default=0,
                   help="TF inter-op threads (default 0 = TF's default, one per core: the independent "
                        "resolution paths of S/M/L then run concurrently; 1 serialises them)")
    p.add_argument("--presets", nargs="+", default=list(PRESET_NAMES))
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--output", default="benchmarks/latency.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.export import parse_size
    from lps_keras.latency import set_tf_threads

    try:
        h, w = parse_size(args.input_size)
    except ValueError as e:
        print(f"benchmarks/latency.py: error: {e}", file=sys.stderr)
        return 2
    threads = set_tf_threads(args.threads, args.inter_op)  # before any TF op runs, so it applies
    from lps_keras.latency import device_name, library_versions, measure_latency
    from lps_keras.presets import get_preset

    shape = (args.batch, h, w, 3)
    rows = []
    for i, name in enumerate(args.presets, start=1):
        arch = get_preset(name, args.num_classes)
        gmacs = args.batch * arch.macs(h, w) / 1e9
        row = {"preset": name, "arch": arch.short(), "params": arch.num_params(), "gmacs": gmacs}
        for backend, precision in COLUMNS:
            col = f"{backend}_{precision}"
            print(f"[{i}/{len(args.presets)}] {name} {col} ...", flush=True)
            try:
                s = measure_latency(arch, backend, shape, warmup=args.warmup, iters=args.iters,
                                    precision=precision, threads=args.threads)
            except Exception as e:  # a missing backend is a blank column, not a failed table
                row[col] = None
                row[f"{col}_error"] = f"{type(e).__name__}: {e}"
                continue
            row[col] = s.median_ms
            row[f"{col}_p90"] = s.p90_ms
            row[f"{col}_gmacs_per_s"] = gmacs / (s.median_ms / 1e3)
        rows.append(row)

    result = {"input_shape": list(shape), "iters": args.iters, "warmup": args.warmup, "device": device_name("tf"),
              "threads": threads, "versions": {**library_versions("tf"), **library_versions("onnxruntime")},
              "rows": rows}
    print()
    print(format_table(result))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


def format_table(result) -> str:
    def ms(v):
        return "   n/a" if v is None else f"{v:8.1f}"

    n, h, w, _ = result["input_shape"]
    t = result["threads"]
    lines = [f"{n}x{h}x{w} on {result['device']}, TF intra-op/inter-op threads {t['intra_op']}/{t['inter_op']} "
             f"(0 = TF default), median of {result['iters']} (ms)",
             f"{'model':9} {'params':>10} {'GMACs':>7} {'tf fp32':>8} {'tf bf16':>8} {'ort fp32':>8} "
             f"{'bf16/fp32':>9} {'tf/ort':>7} {'GMAC/s tf':>9}"]
    for r in result["rows"]:
        f32, b16, ort = r.get("tf_fp32"), r.get("tf_bf16"), r.get("onnxruntime_fp32")
        ratio = f"{b16 / f32:9.2f}" if f32 and b16 else "      n/a"
        vs = f"{f32 / ort:7.2f}" if f32 and ort else "    n/a"
        eff = f"{r['tf_fp32_gmacs_per_s']:9.1f}" if f32 else "      n/a"
        lines.append(f"{r['preset']:9} {r['params']:>10,} {r['gmacs']:7.2f} {ms(f32)} {ms(b16)} {ms(ort)} "
                     f"{ratio} {vs} {eff}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
