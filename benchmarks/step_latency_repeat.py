"""Is a step's latency repeatable? Measure step 1 of an expansion recipe's latency side, now and later.

    python benchmarks/step_latency_repeat.py --recipe recipes/expand_camvid.json --out docs/step1_latency_a.json
    # 30 minutes later:
    python benchmarks/step_latency_repeat.py --recipe recipes/expand_camvid.json --out docs/step1_latency_b.json \\
        --compare docs/step1_latency_a.json

Does exactly what the expansion's step does before any training, with the recipe's latency
settings (backend, input size; L_T and each op's k from rounds of networks timed together with the
parent, the smaller of two k their SEs do not tell apart (``search.decision.latency_z``), ``--single-k`` for
single timings as before; then the parent and all candidates timed
together in paired rounds), from the recipe's start network, in a
fresh latency cache (nothing measured earlier is reused). ``--compare`` checks the issue's criterion
against an earlier run: the same k for every op, and every candidate's paired ΔL within 10% of the
earlier one. The CPU's flags are recorded: compare only runs on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/expand_camvid.json")
    p.add_argument("--out", required=True, help="JSON to write")
    p.add_argument("--compare", default=None, help="an earlier run's JSON: print the k and ΔL agreement")
    p.add_argument("--single-k", action="store_true",
                   help="pick L_T and k from single timings (the code before paired rounds) instead of paired rounds")
    p.add_argument("--tolerance", type=float, default=0.10, help="relative ΔL agreement asked for (default 0.10)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. search.latency_input_shape=[1,720,960,3] (repeatable)")
    return p.parse_args(argv)


def measure(recipe, single_k: bool = False) -> dict:
    from lps_keras.errors import UsageError
    from lps_keras.latency.stats import cpu_flags_text
    from lps_keras.search.candidates import propose_candidates
    from lps_keras.search.expansion import make_latency_fns, search_ops

    start = recipe.arch()
    s = recipe.search
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="step_latency_") as tmp:  # a fresh cache: nothing reused
        latency_fn, latency_set_fn = make_latency_fns(recipe, tmp, verbose=False)
        if latency_set_fn is None:
            raise UsageError(f"{recipe.name}: the recipe measures no paired sets (search.latency.rounds is 0)")
        rounds, ses = None, {}
        if not single_k:  # as Expansion does: each round of N + k d timed together with the parent
            reference = latency_fn(start)

            def rounds(archs):
                values = latency_set_fn(start, archs)
                base = values[start.hash][0]
                if not getattr(latency_set_fn, "deterministic", False):  # a profile's k is the argmin
                    ses.update({a.hash: values[a.hash][1] for a in archs})  # the k rule's tie-break reads them
                return [reference + values[a.hash][0] - base for a in archs]
        target, cands = propose_candidates(start, search_ops(recipe), latency_fn, s.max_k, latencies_fn=rounds,
                                           latency_se_fn=lambda a: ses.get(a.hash, 0.0),
                                           latency_z=s.decision.latency_z)
        paired = latency_set_fn(start, [c.arch for c in cands])
    parent_ms = paired[start.hash][0]
    rows = []
    for c in cands:
        lat, se = paired[c.arch.hash]
        rows.append({"op": c.op, "aliases": list(c.aliases), "k": c.k, "arch": str(c.arch), "single_ms": c.latency,
                     "paired_ms": lat, "delta_ms": lat - parent_ms, "delta_se_ms": se})
    return {"recipe": recipe.name, "start": str(start), "backend": s.latency_backend,
            "input_shape": list(s.latency_input_shape), "cpu": cpu_flags_text(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - t0, 1),
            "rounds": s.latency.rounds, "iters_per_round": s.latency.iters_per_round,
            "k_from": "single timings" if single_k else "paired rounds", "target_ms": target,
            "parent_ms": parent_ms, "candidates": rows}


def compare(a: dict, b: dict, tolerance: float) -> tuple[str, bool]:
    """A Markdown table of run ``a`` against the earlier run ``b``, and whether the criterion holds."""
    earlier = {r["op"]: r for r in b["candidates"]}
    lines = [f"earlier run {b['time']} (parent {b['parent_ms']:.3f} ms), this run {a['time']} "
             f"(parent {a['parent_ms']:.3f} ms)", "",
             "| op | k then | k now | ΔL then (ms) | ΔL now (ms) | ratio | ratio of ΔL/L_parent | agree |",
             "|---|---|---|---|---|---|---|---|"]
    ok = set(earlier) == {r["op"] for r in a["candidates"]}
    for r in a["candidates"]:
        e = earlier.get(r["op"])
        if e is None:
            lines.append(f"| {r['op']} | – | {r['k']} | – | {r['delta_ms']:.3f} | – | – | no |")
            continue
        ratio = r["delta_ms"] / e["delta_ms"] if e["delta_ms"] else float("inf")
        # The decision (argmax of gain / ΔL) and k (closest to the slowest N + δ) do not change when the
        # whole machine gets uniformly slower, so the relative increase is shown beside the criterion's ΔL.
        rel = ratio * b["parent_ms"] / a["parent_ms"]
        agree = r["k"] == e["k"] and abs(ratio - 1) <= tolerance
        ok &= agree
        lines.append(f"| {r['op']} | {e['k']} | {r['k']} | {e['delta_ms']:.3f} ± {e['delta_se_ms']:.3f} | "
                     f"{r['delta_ms']:.3f} ± {r['delta_se_ms']:.3f} | {ratio:.3f} | {rel:.3f} | "
                     f"{'yes' if agree else 'no'} |")
    return "\n".join(lines), ok


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import quiet_tensorflow

    quiet_tensorflow()
    from lps_keras.errors import LPSError
    from lps_keras.fileio import atomic_write_json
    from lps_keras.recipe import load_recipe

    try:
        recipe = load_recipe(args.recipe, overrides=args.overrides)
        earlier = json.loads(Path(args.compare).read_text()) if args.compare else None
        result = measure(recipe, single_k=args.single_k)
    except (LPSError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"CPU: {result['cpu']}\nstep 1 from {result['start']}: target {result['target_ms']:.3f} ms, parent "
          f"{result['parent_ms']:.3f} ms ({result['seconds']} s)")
    for r in result["candidates"]:
        print(f"  {r['op']:<14} k={r['k']}  ΔL {r['delta_ms']:.3f} ± {r['delta_se_ms']:.3f} ms")
    if earlier is not None:
        table, ok = compare(result, earlier, args.tolerance)
        result["compared_with"] = {"file": args.compare, "same_k_and_delta_within": args.tolerance, "holds": ok,
                                   "table": table}
        print(table + f"\n\ncriterion (same k, ΔL within {args.tolerance:.0%}): {'holds' if ok else 'does not hold'}")
    atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
