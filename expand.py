#!/usr/bin/env python
"""Progressive expansion (Algorithm 1 of LPS-Net): grow a network one dimension at a time.

Example:
    python expand.py --recipe recipes/expand_camvid.json --steps 3 --latency-backend tf \\
        --output runs/expand/camvid
Rerunning the same command resumes from <output>/journal.json without re-measuring or
re-training anything that finished. The reports of a finished search, from its journal alone:
    python expand.py --recipe recipes/expand_camvid.json --from-journal docs/expansion_camvid_journal.json \
        --output /tmp/camvid_report

On a Ray cluster (see the README), with latencies measured on the node that offers resource "jetson":
    python expand.py --recipe recipes/expand_camvid.json --output runs/expand/camvid \
        --executor ray --ray-address HEAD_IP:6379 --gpus-per-task 1 --latency-resource jetson
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    from lps_keras.latency.backends import backend_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="recipe JSON with a search section (start arch = model)")
    parser.add_argument("--output", required=True, help="output directory (journal, table, plot, candidate runs)")
    parser.add_argument("--steps", type=int, help="expansion steps (--set search.steps=...)")
    parser.add_argument("--latency-backend", choices=backend_names(),
                        help="latency backend (default search.latency_backend); 'macs' ranks by GMACs")
    parser.add_argument("--latency-cache", help="latency cache JSON (default <output>/<search.latency_cache>)")
    parser.add_argument("--device-key", help="use latencies measured on another device (a table imported into "
                                             "the cache); a cache miss is then an error instead of a measurement")
    parser.add_argument("--workers", type=int, help="candidates trained in parallel (default search.workers)")
    parser.add_argument("--devices", help="comma-separated GPU ids, one per worker (e.g. 0,1,2,3)")
    parser.add_argument("--executor", choices=("pool", "ray"),
                        help="where candidates train: a local process pool, or one Ray task each "
                             "(default search.executor); Ray is the extra requirements-ray.txt")
    parser.add_argument("--ray-address", help="Ray cluster to join (HEAD_IP:6379, as `ray start --head` prints; "
                                              "default: a new local Ray instance)")
    parser.add_argument("--gpus-per-task", type=float, help="GPUs per candidate's Ray task (default "
                                                            "search.gpus_per_task, 0: CPU-only)")
    parser.add_argument("--latency-resource", metavar="NAME",
                        help="measure every latency as a Ray task needing custom resource NAME, i.e. on the "
                             "device node started with ray start --resources='{\"NAME\": 1}'")
    parser.add_argument("--recipes-dir", help="where step recipes go (default recipes/expanded/<output name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--from-journal", metavar="JOURNAL",
                        help="measure and train nothing: write the table (CSV, JSON), plot and Table 4 comparison "
                             "of the steps JOURNAL recorded into --output, and print each step judged again by "
                             "the current rules on its final scores (the recipe gives the decision settings)")
    args = parser.parse_args(argv)
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    return guarded("expand.py", lambda: run(args))


def run(args) -> int:
    from lps_keras.latency import check_backend
    from lps_keras.recipe import load_recipe
    from lps_keras.search.expansion import run as run_expansion

    recipe = load_recipe(args.recipe, recipe_overrides(args))
    if args.from_journal:
        return report_journal(recipe, args.from_journal, Path(args.output))
    devices = args.devices.split(",") if args.devices else None
    if args.device_key is None and args.latency_resource is None and recipe.search.latency.source == "measured":
        # Latencies are measured here: the backend must exist before anything starts (on a device
        # node, the Ray executor's latency task checks it there).
        check_backend(recipe.search.latency_backend)
    run_expansion(recipe, args.output, devices=devices, device_key=args.device_key, recipes_dir=args.recipes_dir,
                  print_table=True, ray_address=args.ray_address, latency_resource=args.latency_resource)
    return 0


def report_journal(recipe, journal_path, output: Path) -> int:
    """``--from-journal``: the reports of a finished search, from its journal alone (nothing trained)."""
    from lps_keras.errors import UsageError
    from lps_keras.fileio import atomic_write_text
    from lps_keras.search.decision import search_decision, with_looks
    from lps_keras.search.journal import SearchJournal
    from lps_keras.search.replay import recorded_steps, replay_lines
    from lps_keras.search.report import format_table, plot_expansion, table4_comparison, write_table

    if not Path(journal_path).is_file():
        raise UsageError(f"--from-journal {journal_path}: no such file")
    journal = SearchJournal(journal_path)
    steps = recorded_steps(journal)
    if not steps:
        raise UsageError(f"--from-journal {journal_path}: the journal holds no step")
    backend = recipe.search.latency_backend
    unit = "GMACs" if backend == "macs" else "ms"
    devices = journal.latency_device_map()
    output.mkdir(parents=True, exist_ok=True)
    write_table(steps, output / "expansion.csv", output / "expansion.json", latency_unit=unit, devices=devices)
    plot_expansion(steps, None, output / "expansion.png", latency_unit=unit,
                   title=f"Progressive expansion: {recipe.name} ({backend}, {unit})")
    comparison = table4_comparison(steps, unit, devices)
    if comparison is not None:
        atomic_write_text(output / "table4_comparison.md", comparison + "\n")
    print(format_table(steps, unit, devices))
    decision, racing = search_decision(recipe.search)
    config = with_looks(decision, recipe.search.proxy.seeds, racing)
    print(f"\nEach step judged again by the current rules (looks {config.looks}) on its final scores:")
    print("\n".join(replay_lines(steps, config)))
    return 0


def recipe_overrides(args) -> list[str]:
    """``--steps`` / ``--latency-backend`` / ``--latency-cache`` / ``--workers`` / ``--executor`` /
    ``--gpus-per-task`` as ``--set search.*`` overrides."""
    overrides = list(args.set)
    cache = None if args.latency_cache is None else str(Path(args.latency_cache).resolve())
    for key, value in (("steps", args.steps), ("latency_backend", args.latency_backend),
                       ("latency_cache", cache), ("workers", args.workers), ("executor", args.executor),
                       ("gpus_per_task", args.gpus_per_task)):
        if value is not None:
            overrides.append(f"search.{key}={json.dumps(value)}")
    return overrides


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
