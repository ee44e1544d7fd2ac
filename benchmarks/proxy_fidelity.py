"""Proxy fidelity: how well a short proxy ranks the first expansion step's candidates (issue 13, item 4).

For the candidates of the first step from the recipe's start network (N0 + k_d d for every op d,
with k_d from the recipe's latency backend), each proxy below trains N0 and every candidate with
several seeds, through the search's own code (``run_expansion`` with one step, so the numbers
are exactly what the search would see, and a killed study resumes from its journals):

- ``scratch``: the recipe's proxy (``search.proxy``, its ``label_stride`` included), from scratch, ``--seeds`` seeds;
- ``warm<W>``: ``search.proxy.init = parent`` with ``warm_iterations = W`` for each W of
  ``--warm-iterations``: every candidate grown from N0's trained seed-0 weights (the scratch
  proxy's own N0 runs, shared), ``--seeds`` seeds;
- ``reference``: from scratch, ``--ref-factor`` times the proxy's iterations, ``--ref-seeds`` seeds.

Reported per proxy: the regret of its choice against the reference (``regret.md`` / ``regret.json``: the search's
verdict replayed on every subset of its seeds, :mod:`lps_keras.search.regret`; the figure to judge a proxy by), and
as secondary columns Kendall tau-b of its ranking (by slope and by mean score) against the reference's, whether it
picks the reference's winner, the mean seed sd, its step's verdict, and CPU minutes (process CPU time, all threads)
per (candidate, seed) and per candidate. The trainings run as the search runs them (the recipe's ``search.workers``,
each on its own cores with ``search.pin_cpus``; ``--workers``). Writes ``<output>/fidelity.json``, ``fidelity.md``,
``regret.json`` and ``regret.md`` (computed by :mod:`lps_keras.search.fidelity`; the replayed verdicts follow the
recipe's ``search.decision`` and racing, as the search does); ``--from-json`` recomputes the regret report of a
finished study without training anything, by the recipe the study recorded (or ``--recipe``).

The CamVid studies (docs/proxy_fidelity_camvid.md, which has the step-2 command; hours of CPU). Step 1, with the
full-resolution loss as ``scratch`` (the recipe's proxy before it became stride4) and the variants beside it:

    nice python benchmarks/proxy_fidelity.py --recipe recipes/expand_camvid.json --output runs/fid2 \\
        --reference-json docs/proxy_fidelity_camvid.json --seeds 3 --warm-iterations 300 \\
        --set search.proxy.label_stride=null --variant 'stride4:label_stride=4' \\
        --variant 'crop128:crop_size=[128,128];iterations=1600' \\
        --variant 'warm300lr:init="parent";warm_iterations=300;warm_lr=0.01'

(``--reference-json`` reuses the 2026-11-22 reference; without it, ``--ref-seeds 3 --ref-factor 4`` trains one.)
Each network is timed once for the whole study (``<output>/study_latencies.json``, with where it was measured),
so every proxy searches the same candidate set (the same k per op), also when the study is resumed in a later
session on another CPU kind. Each proxy's journal fingerprint names the latency backend (the recipe's, or
``macs``), so a rerun with another backend is refused; journals written before 2026-12-01 named ``recipe``
there and are refused too (their output directory must be started afresh).

Verified only on a tiny synthetic configuration (exercises the code, says nothing about fidelity;
22 trainings, about 6 minutes on the shared 2-core CPU):

    python benchmarks/proxy_fidelity.py --recipe recipes/expand_synthetic.json --output /tmp/fid \
        --ops depth_s4-5,width_s4-5,res_path1 --seeds 2 --ref-seeds 2 --ref-factor 2 --warm-iterations 2 \
        --latency macs --set data.root=/tmp/fid/synthetic \
        --set 'data.synthetic={"num_train": 12, "num_val": 4, "height": 64, "width": 128, "seed": 0}' \
        --set search.proxy.iterations=3 --set search.proxy.batch_size=2 --set 'search.proxy.crop_size=[64, 64]' \
        --set search.proxy.train_subset=12 --set search.proxy.val_subset=4 \
        --set 'search.latency_input_shape=[1, 64, 128, 3]' --set search.max_k=2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lps_keras.errors import UsageError  # noqa: E402 - after the path set-up above


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", help="expansion recipe (start network = model, proxy = search.proxy)")
    p.add_argument("--output", required=True, help="study directory (journals, candidate runs, fidelity.json/.md)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per candidate for the scratch and warm proxies")
    p.add_argument("--ref-seeds", type=int, default=3, help="seeds per candidate for the reference")
    p.add_argument("--ref-factor", type=int, default=4, help="reference schedule = this many times the proxy's")
    p.add_argument("--warm-iterations", default="",
                   help="comma-separated warm-start schedules to study (iterations after growing; empty: none)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE...]",
                   help="one more proxy to study: search.proxy fields changed from the recipe's, values as JSON, "
                        "e.g. 'crop128:crop_size=[128,128];iterations=1600' (fewer pixels, more iterations), "
                        "'stride4:label_stride=4' (the loss at 1/4 of the label resolution), "
                        "'pixacc:score=\"pixel_accuracy\"' (repeatable)")
    p.add_argument("--ops", default="", help="comma-separated op names (default: every expansion op)")
    p.add_argument("--latency", default="recipe", choices=("recipe", "macs"),
                   help="latency for k_d: the recipe's backend (cached in <output>) or GMACs at its input shape")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("--workers", type=int, default=None,
                   help="trainings in parallel, each on its own share of the cores when the recipe's "
                        "search.pin_cpus is set (default: the recipe's search.workers, as the search runs them)")
    p.add_argument("--from-json", metavar="FIDELITY_JSON",
                   help="train nothing: recompute the regret report of a finished study's fidelity.json into "
                        "<output>/regret.json and regret.md, its verdicts by the search.decision and racing of the "
                        "recipe the study recorded, with --set added to its overrides (or --recipe/--set when a "
                        "recipe is given)")
    p.add_argument("--reference-json", metavar="FIDELITY_JSON",
                   help="judge against a finished study's reference instead of training one: its candidates (op, "
                        "k) and latencies are reused exactly (nothing is timed), so the proxies here train the same "
                        "networks; its rows are kept in the report beside the new ones")
    p.add_argument("--proxies", default="",
                   help="comma-separated proxies to train in this process (scratch, warm<W>, reference; default: "
                        "all); runs sharing one --output can then go in parallel, and the report is written "
                        "once every proxy's journal is complete")
    return p.parse_args(argv)


class CpuTimed:
    """evaluate_fn wrapper adding the call's process CPU seconds (all threads) to the evaluation's metrics."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, arch, context):
        t0 = time.process_time()
        result = self.fn(arch, context)
        result["metrics"]["cpu_seconds"] = round(time.process_time() - t0, 2)
        return result


class SharedStart:
    """A warm proxy's evaluate_fn: the start network comes from the scratch proxy's runs (same schedule)."""

    def __init__(self, start_fn, candidate_fn):
        self.start_fn, self.candidate_fn = start_fn, candidate_fn

    def __call__(self, arch, context):
        return (self.start_fn if context.step == 0 else self.candidate_fn)(arch, context)


def parse_variants(items) -> list[tuple[str, dict]]:
    """``NAME:KEY=VALUE;KEY=VALUE`` -> (name, {key: JSON value}); one clear error per bad item."""
    import json

    from lps_keras.errors import check_path_name
    from lps_keras.recipe_sections import ProxyConfig

    fields = {f.name for f in dataclasses.fields(ProxyConfig)}
    out = []
    for item in items:
        name, sep, body = item.partition(":")
        if not sep or not body:
            raise UsageError(f"--variant {item!r}: expected NAME:KEY=VALUE[;KEY=VALUE...]")
        check_path_name("--variant name", name)
        changes = {}
        for part in body.split(";"):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in fields:
                raise UsageError(f"--variant {item!r}: {key!r} is not a search.proxy field "
                                 f"({', '.join(sorted(fields))})")
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip()  # a bare string
            changes[key] = tuple(value) if isinstance(value, list) else value
        out.append((name, changes))
    return out


def write_regret(doc: dict, out: Path, recipe, source: str) -> None:
    """regret.json / regret.md of a study, its verdicts by ``recipe``'s search.decision and racing (the
    search's own rule, looks included; ``source`` names that recipe in the report)."""
    from lps_keras.fileio import atomic_write_json, atomic_write_text
    from lps_keras.search.decision import search_decision
    from lps_keras.search.fidelity import regret_markdown, regret_report

    decision, racing = search_decision(recipe.search)
    report = regret_report(doc, decision, racing, source)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "regret.json", report)
    text = regret_markdown(report)
    atomic_write_text(out / "regret.md", text + "\n")
    print(text)


def run(args) -> int:
    import json

    from lps_keras.arch import EXPANSION_OPS, EXPANSION_OPS_BY_NAME
    from lps_keras.fileio import atomic_write_json, atomic_write_text
    from lps_keras.latency import cpu_flags_text
    from lps_keras.latency.profile import load_profile, sigma_rel
    from lps_keras.recipe import load_recipe, validate_recipe
    from lps_keras.search import SearchJournal
    from lps_keras.search.executors import make_executor
    from lps_keras.search.expansion import ProxyEvaluator, latency_device_text, make_latency_fn, profile_path
    from lps_keras.search.fidelity import (
        StudyLatencies,
        fidelity_markdown,
        fixed_latency,
        reference_step,
        rescored,
        summarize,
        with_profile_se,
    )

    if args.from_json:
        try:
            doc = json.loads(Path(args.from_json).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--from-json {args.from_json}: {e}") from None
        # The verdicts follow the study's recipe (as recorded, with its overrides), or --recipe/--set if given.
        # --set alone adds to the recorded overrides (so one decision setting can be tried on a finished study)
        path, overrides = ((args.recipe, args.set) if args.recipe
                           else (doc.get("recipe"), [*(doc.get("overrides") or []), *args.set]))
        if not path:
            raise UsageError(f"--from-json {args.from_json} names no recipe: give --recipe for its decision rule")
        write_regret(doc, Path(args.output), load_recipe(path, overrides),
                     " ".join([str(path), *(f"--set {o}" for o in overrides)]))
        return 0
    if not args.recipe:
        raise UsageError("--recipe is needed to run a study (or --from-json to report one)")
    recipe = load_recipe(args.recipe, args.set)
    for flag in ("seeds", "ref_seeds", "ref_factor"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)!r}")
    try:
        warm = [int(w) for w in args.warm_iterations.split(",") if w.strip()]
    except ValueError:
        raise UsageError(f"--warm-iterations must be comma-separated integers, got {args.warm_iterations!r}") from None
    unknown = [n for n in args.ops.split(",") if n and n not in EXPANSION_OPS_BY_NAME]
    if unknown:
        raise UsageError(f"--ops: unknown op {unknown[0]!r}; known: {', '.join(EXPANSION_OPS_BY_NAME)}")
    ops = [EXPANSION_OPS_BY_NAME[n] for n in args.ops.split(",") if n] or list(EXPANSION_OPS)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    reference_doc = None
    if args.reference_json:
        try:
            reference_doc = json.loads(Path(args.reference_json).read_text())
            next(r for r in reference_doc["proxies"] if r["proxy"] == "reference")
        except (OSError, ValueError, KeyError, StopIteration) as e:
            raise UsageError(f"--reference-json {args.reference_json}: not a fidelity.json with a reference row "
                             f"({e})") from None
        latency, ref_ops = fixed_latency(reference_doc, recipe.arch(), recipe.search.max_k)
        ops = [op for op in ref_ops if not args.ops or op in ops]
    elif args.latency == "macs":
        _, h, w, _ = recipe.search.latency_input_shape

        def latency(arch):
            return arch.macs(h, w) / 1e9
    else:  # measured once per network for the whole study: every proxy, every session, one candidate set
        latency = StudyLatencies(out / "study_latencies.json", make_latency_fn(recipe, out),
                                 latency_device_text(recipe))

    def proxy_variant(**changes):
        proxy = dataclasses.replace(recipe.search.proxy, **changes)
        return validate_recipe(dataclasses.replace(recipe, search=dataclasses.replace(recipe.search, proxy=proxy)),
                               source="proxy variant")

    p = recipe.search.proxy
    variants = [("scratch", proxy_variant(init="scratch", warm_iterations=None), args.seeds)]
    variants += [(f"warm{w}", proxy_variant(init="parent", warm_iterations=w), args.seeds) for w in warm]
    variants += [(name, proxy_variant(**changes), args.seeds) for name, changes in parse_variants(args.variant)]
    if reference_doc is None:
        # The reference is the long full training: the loss at the recipe's label resolution, whatever the proxy's.
        variants.append(("reference", proxy_variant(init="scratch", warm_iterations=None, label_stride=None,
                                                    iterations=p.iterations * args.ref_factor), args.ref_seeds))
    chosen = [n for n in args.proxies.split(",") if n]
    unknown = [n for n in chosen if n not in {name for name, _, _ in variants}]
    if unknown:
        raise UsageError(f"--proxies: unknown proxy {unknown[0]!r}; known: {', '.join(n for n, _, _ in variants)}")
    if any(n.startswith("warm") for n in chosen) and "scratch" not in chosen \
            and not (out / "scratch" / "journal.json").exists():
        raise UsageError("--proxies: a warm proxy starts from the scratch proxy's trained N0: run scratch first")
    scratch_eval = CpuTimed(ProxyEvaluator(variants[0][1], str(out / "scratch")))
    # The journal's latencies come from the recipe's backend (or its profile) unless --latency macs: its
    # fingerprint names that backend, so a rerun with another one is refused instead of replaying them.
    backend = "macs" if args.latency == "macs" else recipe.search.latency_backend
    workers = recipe.search.workers if args.workers is None else args.workers
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers!r}")
    executor = make_executor("pool", workers, pin_cpus=recipe.search.pin_cpus and workers > 1)
    try:
        steps = train_proxies(variants, chosen, out, latency, scratch_eval, ops, backend, executor)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if chosen and set(chosen) != {n for n, _, _ in variants}:
        print("trained: " + ", ".join(chosen) + "; rerun without --proxies (journals resume) for the report")
        return 0
    ref_step = steps["reference"][1] if reference_doc is None else reference_step(reference_doc, recipe.arch())
    rows = []
    for name, (start, step, seeds) in steps.items():
        journal = SearchJournal(out / name / "journal.json")
        rows.append(summarize(name, start, step, ref_step, seeds, journal))
        if name != "reference" and recipe.search.proxy.score == "miou":
            extra = rescored(rows[-1], step, start.arch, journal, ref_step=ref_step)
            if extra is not None:
                rows.append(extra)
    if profile_path(recipe) is not None and args.latency != "macs" and reference_doc is None:
        # latencies predicted by a profile: the differences carry its error, as in a search on that profile
        with_profile_se(rows, sigma_rel(load_profile(profile_path(recipe))))
    if reference_doc is not None:  # the finished study's rows (its reference, and proxies not retrained here)
        rows += [r for r in reference_doc["proxies"] if r["proxy"] not in steps]
    doc = {"recipe": str(args.recipe), "overrides": args.set,
           "latency": "reference-json" if reference_doc is not None else args.latency,
           "reference_json": args.reference_json, "ops": [op.name for op in ops],
           "cpu": cpu_flags_text(),  # the CPU minutes are this machine's (its kind changes between sessions)
           "latency_devices": latency.devices() if isinstance(latency, StudyLatencies) else None,
           "proxies": rows}
    atomic_write_json(out / "fidelity.json", doc)
    table = fidelity_markdown(rows)
    atomic_write_text(out / "fidelity.md", table + "\n")
    print(table)
    write_regret(doc, out, recipe, " ".join([str(args.recipe), *(f"--set {o}" for o in args.set)]))
    return 0


def train_proxies(variants, chosen, out, latency, scratch_eval, ops, backend, executor) -> dict:
    """Each proxy's one-step search, its trainings on ``executor``: {name: (start step, step 1, seeds)}."""
    from lps_keras.search import SearchJournal, run_expansion
    from lps_keras.search.expansion import ProxyEvaluator, journal_fingerprint

    steps = {}
    for name, r, seeds in variants:
        if chosen and name not in chosen:
            continue
        print(f"== proxy {name}: {r.search.proxy.iterations} iterations"
              + (f", warm start then {r.search.proxy.warm_iterations}" if r.search.proxy.init == "parent" else "")
              + f", {seeds} seed(s)", flush=True)
        evaluate = CpuTimed(ProxyEvaluator(r, str(out / name)))
        if r.search.proxy.init == "parent":
            evaluate = SharedStart(scratch_eval, evaluate)
        history = run_expansion(
            r.arch(), latency, evaluate, 1, journal=SearchJournal(out / name / "journal.json"), ops=ops,
            max_k=r.search.max_k, fingerprint=journal_fingerprint(r, backend), seeds=seeds,
            warm_start=r.search.proxy.init == "parent", executor=executor,
        )
        steps[name] = (history[0], history[1], seeds)
    return steps


def main(argv=None) -> int:
    args = parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("proxy_fidelity.py", lambda: run(args))


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
