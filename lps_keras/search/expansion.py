"""Progressive expansion wired to real latency measurement and real proxy training.

:mod:`lps_keras.search.algorithm` holds Algorithm 1 as pure logic; this module supplies its two
functions from a recipe: ``latency_fn`` (:mod:`lps_keras.latency`, through the persistent
cache) and ``evaluate_fn`` (train the candidate with the recipe's proxy schedule via
:func:`lps_keras.train.train` and return its validation mIoU). Everything the search depends on
comes from the recipe's ``search`` section (``--set search.steps=3`` etc.). Candidates of a step can run
in parallel on an executor (:mod:`lps_keras.search.executors`: a process pool, one worker process per
device, or a Ray cluster), the journal in this process being the durable work list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from lps_keras.arch import EXPANSION_OPS, Arch
from lps_keras.errors import check_path_name
from lps_keras.fileio import DirectoryLock
from lps_keras.recipe import Recipe, validate_recipe
from lps_keras.recipe_sections import TrainConfig
from lps_keras.search.algorithm import run_expansion
from lps_keras.search.decision import search_decision
from lps_keras.search.executors import SearchExecutor, make_executor
from lps_keras.search.journal import EvalContext, SearchJournal, Step, fingerprint
from lps_keras.search.report import format_table, plot_expansion, table4_comparison, write_step_recipes, write_table


def proxy_recipe(recipe: Recipe, arch: Arch, run_dir, name: Optional[str] = None, seed: int = 0,
                 init: Optional[str] = None) -> Recipe:
    """``recipe`` with ``arch`` as the model, the proxy schedule as the training schedule and ``run_dir``.

    Validation runs once, at the end of the proxy schedule; backups every quarter of it so an
    interrupted candidate resumes instead of restarting. ``seed`` (the proxy seed) is added to
    ``train.seed``; ``init`` (a warm start's grown weights) trains ``search.proxy.warm_iterations``
    (default: ``iterations``) from those weights at ``search.proxy.warm_lr`` (default: ``base_lr``).
    """
    proxy = recipe.search.proxy
    iterations = (proxy.warm_iterations or proxy.iterations) if init else proxy.iterations
    arch_dict = arch.to_dict()
    arch_dict.pop("num_classes")  # the recipe's model.num_classes / dataset decides it, as for the start arch
    train = dataclasses.replace(
        recipe.train,
        iterations=iterations,
        batch_size=proxy.batch_size,
        base_lr=(proxy.warm_lr or proxy.base_lr) if init else proxy.base_lr,
        val_interval=iterations,
        checkpoint_interval=max(1, iterations // 4),
        log_interval=max(1, min(recipe.train.log_interval, iterations)),
        image_summaries=0,
        distribute="none",
        seed=recipe.train.seed + seed,
        loss_label_stride=proxy.label_stride or recipe.train.loss_label_stride,
        # a proxy's schedule is its own few hundred iterations: poly over them, never the recipe's step
        # milestones (absolute steps of a full training, which a proxy would never reach)
        lr_schedule="poly", lr_steps=None, lr_step_factors=None,
        init=None if init is None else str(init),
        run_dir=str(run_dir),
    )
    subsets = {key: getattr(proxy, key) for key in ("train_subset", "val_subset", "eval_size")
               if getattr(proxy, key) is not None}
    data = dataclasses.replace(recipe.data, augment=dataclasses.replace(recipe.data.augment,
                                                                        crop_size=tuple(proxy.crop_size)), **subsets)
    return validate_recipe(dataclasses.replace(
        recipe, name=name or f"{recipe.name}_{arch.hash}",
        model=dataclasses.replace(recipe.model, preset=None, arch=arch_dict), train=train, data=data,
    ), source=f"proxy recipe for {arch}")


def candidate_dir(output_dir, key: str, seed: int = 0) -> Path:
    """Run directory of one (candidate, seed): seed 0 keeps the single-seed layout, so old searches resume.

    ``key`` is the candidate's arch hash; checked all the same, since it becomes a directory name.
    """
    check_path_name("candidate key", key)
    return Path(output_dir) / "candidates" / (key if seed == 0 else f"{key}-seed{seed}")


@dataclasses.dataclass(frozen=True)
class ProxyEvaluator:
    """``evaluate_fn`` for the search: proxy-train ``arch`` with ``context.seed`` and return its validation mIoU.

    Picklable (a recipe and a path), so it runs in worker processes too. Each (candidate, seed)
    trains in :func:`candidate_dir`, which ``train`` resumes if a previous run was killed. With
    ``search.proxy.init = parent`` a candidate starts from :meth:`warm_start`'s grown weights.
    """

    recipe: Recipe
    output_dir: str
    verbose: Any = 2

    def __call__(self, arch: Arch, context: EvalContext) -> dict:
        from lps_keras.train import train
        from lps_keras.train.errors import RUN_ADVICE, RunConflictError

        run_dir = candidate_dir(self.output_dir, context.key, context.seed)
        init, how = None, "scratch"
        if self.recipe.search.proxy.init == "parent" and context.parent_weights:
            init, how = self.warm_start(arch, context)
        recipe = proxy_recipe(self.recipe, arch, run_dir, seed=context.seed, init=init)
        try:
            summary = train(recipe, resume=True, verbose=self.verbose)
        except RunConflictError as e:  # train.py's advice (--run-dir, --no-resume) is not expand.py's
            raise RunConflictError(f"candidate {context.key} seed {context.seed}: {str(e).removesuffix(RUN_ADVICE)}; "
                                   f"this search's journal does not match its candidates: use a new --output, or "
                                   f"delete {run_dir}") from None
        keep = ("miou", "pixel_accuracy", "mean_class_accuracy", "final_step", "fit_seconds", "wall_seconds",
                "deploy_parity_max_rel_error")
        return {
            "score": float(summary[self.recipe.search.proxy.score]),
            "metrics": {**{k: summary.get(k) for k in keep}, "seed": recipe.train.seed, "init": how},
            "weights": str(run_dir / "deploy.keras"),
        }

    def warm_start(self, arch: Arch, context: EvalContext) -> tuple[Optional[str], str]:
        """Grow the parent's trained training-form weights into ``arch``; (path of the grown model, how).

        The parent's weights are its seed-0 run's ``last.keras`` (beside the ``deploy.keras`` the journal
        records). New layers draw their fresh weights from ``train.seed + context.seed``, so seeds differ
        there too. The grown model is written once per (candidate, seed) and reused on resume. A child
        that is no growth of the parent (:func:`lps_keras.grow.grow_model` refuses it) or a parent without
        ``last.keras`` trains from scratch, and its metrics say so.
        """
        check_path_name("candidate key", context.key)
        grown = Path(self.output_dir) / "candidates" / "grown" / f"{context.key}-seed{context.seed}.keras"
        if grown.exists():
            return str(grown), "parent"
        parent_file = Path(context.parent_weights).with_name("last.keras")
        if not parent_file.exists():
            return None, f"scratch (no {parent_file})"
        import keras

        from lps_keras.fileio import atomic_save_model
        from lps_keras.grow import grow_model
        from lps_keras.weights import load_weights_file

        parent = load_weights_file(parent_file, arch)
        keras.utils.set_random_seed(self.recipe.train.seed + context.seed)
        try:
            child = grow_model(parent, arch.with_num_classes(parent.arch.num_classes))
        except ValueError as e:
            return None, f"scratch (cannot grow: {e})"
        atomic_save_model(child, grown, include_optimizer=False)
        return str(grown), "parent"


def make_latency_fns(recipe: Recipe, output_dir, executor=None, device_key=None, verbose=True):
    """``(latency_fn, latency_set_fn or None)`` of the recipe (:func:`lps_keras.search.latencies.latency_functions`).

    The cache is ``search.latency_cache``, relative to ``output_dir`` unless absolute. With
    ``search.latency.source = profile:<file>`` the latencies are predicted by that profile instead
    (deterministic, no device needed); a profile of another backend or input size is refused.
    """
    from lps_keras.search.latencies import latency_functions

    s = recipe.search
    return latency_functions(s.latency_backend, s.latency_input_shape, warmup=s.latency_warmup,
                             iters=s.latency_iters, cache=Path(output_dir) / s.latency_cache, executor=executor,
                             device_key=device_key, rounds=s.latency.rounds,
                             iters_per_round=s.latency.iters_per_round, profile=profile_path(recipe),
                             verbose=verbose)


def make_latency_fn(recipe: Recipe, output_dir, device_key=None, verbose=True) -> Callable[[Arch], float]:
    """The single-network latency function of :func:`make_latency_fns` (measured here)."""
    return make_latency_fns(recipe, output_dir, device_key=device_key, verbose=verbose)[0]


def search_ops(recipe: Recipe) -> tuple:
    """The recipe's operation set (``search.ops`` by name, in the table's order; default all of EXPANSION_OPS)."""
    names = recipe.search.ops
    return tuple(EXPANSION_OPS) if names is None else tuple(op for op in EXPANSION_OPS if op.name in names)


def profile_path(recipe: Recipe) -> Optional[Path]:
    """The latency profile of ``search.latency.source = profile:<file>``, or None for measured latencies."""
    source = recipe.search.latency.source
    return Path(source[len("profile:"):].strip()) if source.startswith("profile:") else None


def latency_device_text(recipe: Recipe, executor=None, device_key: Optional[str] = None) -> Optional[str]:
    """Where the search's latencies are measured, as the journal records it per step: ``<backend> on <device>``,
    the device being the CPU's model, core count and instruction-set flags when the backend times on the CPU
    (asked where the executor measures); ``profile <file>`` for a profile; None for ``macs`` (computed)."""
    backend = recipe.search.latency_backend
    profile = profile_path(recipe)
    if profile is not None:
        return f"profile {profile}"
    if backend == "macs":
        return None
    if device_key is not None:  # every latency is a hit in the cache of that device: nothing is timed here
        return f"{backend} from the latency cache of {device_key} (--device-key)"
    from lps_keras.latency import cpu_flags_text, device_name

    where = getattr(executor, "on_device", None) or (lambda fn, *a: fn(*a))
    device = where(device_name, backend)
    return f"{backend} on {where(cpu_flags_text) if device.startswith('CPU:') else device}"


def journal_fingerprint(recipe: Recipe, backend: str):
    """:func:`search_fingerprint`, plus which latency profile the search runs on when it runs on one.

    The journal stores it as its setup's fingerprint, so it records the profile (path, sha256, device),
    and a search resumed with another profile is refused. Measured latencies keep the bare fingerprint,
    so older journals still resume.
    """
    fp = search_fingerprint(recipe, backend)
    profile = profile_path(recipe)
    if profile is None:
        return fp
    from lps_keras.fileio import file_sha256
    from lps_keras.latency.profile import load_profile

    data = load_profile(profile)
    return {"recipe": fp, "latency_source": recipe.search.latency.source,
            "profile": {"sha256": file_sha256(profile)[:16], "device": data["device"],
                        "backend": data["backend"], "input_shape": data["input_shape"],
                        "measured": data.get("measured", True)}}


def search_fingerprint(recipe: Recipe, backend: str) -> str:
    """What the journal's numbers depend on: data, proxy schedule, latency setup, optimiser."""
    d = recipe.to_dict()
    s = d["search"]
    # How many seeds, the decision rule (search.decision) and racing change which (arch, seed) pairs are
    # trained, not what any of them scores: left out, so a search can gain seeds on resume. A scratch
    # proxy leaves out the warm-start keys.
    proxy = {k: v for k, v in s["proxy"].items() if k not in ("seeds", "racing")}
    if proxy["init"] == "scratch":
        del proxy["init"], proxy["warm_iterations"]
    if proxy.get("warm_lr") is None:  # unset: journals written before the field keep their fingerprint
        proxy.pop("warm_lr", None)
    return fingerprint({
        "data": d["data"],
        "proxy": proxy,
        "latency": [backend, s["latency_input_shape"]],
        "optimizer": {k: d["train"][k] for k in ("momentum", "weight_decay", "poly_power", "loss", "seed")},
        # class balance changes every score; only when it is on, so older journals keep their fingerprint
        **({"class_balance": [d["train"][k] for k in ("class_balance", "class_weights", "enet_c")]}
           if d["train"]["class_balance"] != "none" else {}),
        **_schedule_extras(d["train"], s["proxy"]),
    })


def _schedule_extras(train: dict, proxy: dict) -> dict:
    """Training settings that change every candidate's score and were left out of early fingerprints.

    Only those set away from their defaults, so journals written before they counted keep their
    fingerprint (a resumed search with another warm-up or OHEM threshold would otherwise replay the
    old scores, and its half-trained candidates would fail their run directory's trajectory check).
    """
    default = TrainConfig()
    keys = ["warmup_iterations", "mixed_precision"]
    if train["loss"] == "ohem":
        keys += ["ohem_threshold", "ohem_min_kept"]
    if proxy.get("label_stride") is None:
        keys.append("loss_label_stride")
    extras = {k: train[k] for k in keys if train[k] != getattr(default, k)}
    return {"schedule": extras} if extras else {}


def run(
    recipe: Recipe,
    output_dir,
    devices: Optional[list[str]] = None,
    device_key: Optional[str] = None,
    recipes_dir=None,
    latency_fn: Optional[Callable[[Arch], float]] = None,
    evaluate_fn: Optional[Callable[[Arch, EvalContext], Any]] = None,
    progress: Optional[Callable[[str], None]] = print,
    print_table: bool = False,
    executor: Optional[SearchExecutor] = None,
    ray_address: Optional[str] = None,
    latency_resource: Optional[str] = None,
) -> list[Step]:
    """Run (or resume) the expansion of ``recipe``'s model and write all outputs.

    Steps, latency backend and cache, proxy schedule and worker count come from ``recipe.search``.
    Writes into ``output_dir``: ``journal.json``, ``expansion.csv``/``expansion.json``
    (Table-4 style), ``expansion.png`` (Fig.-7 style), ``candidates/<hash>/`` (proxy runs), and
    one trainable recipe per chosen step in ``recipes_dir`` (default
    ``recipes/expanded/<output name>``). ``devices`` pins one GPU per worker; ``device_key`` uses
    latencies measured on another device (a miss is then an error); ``latency_fn`` /
    ``evaluate_fn`` replace the real measurement / proxy training; ``print_table`` prints the
    Markdown table at the end. ``executor`` (see :func:`~lps_keras.search.executors.make_executor`;
    default: made here from the recipe's ``search`` section, ``devices``, ``ray_address`` and
    ``latency_resource``) runs the evaluations and says where latencies are measured; one passed in is
    left running.
    """
    output_dir = Path(output_dir)
    recipe.arch()  # LPS-Net only: another family is refused before an executor or a directory is made
    owned = executor is None
    if owned:  # made first: a cluster that cannot be reached stops the command before anything is written
        s = recipe.search
        executor = make_executor(s.executor, s.workers, devices, address=ray_address, gpus_per_task=s.gpus_per_task,
                                 latency_resource=latency_resource, pin_cpus=s.pin_cpus)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        # One search per output directory, for the whole run: a second one would retrain finished
        # candidates and rewrite the journal under the first. The candidates' train() calls (here or in
        # workers) lock their own run directories below it, so the workers are not blocked by this.
        with DirectoryLock(output_dir, "expansion output directory"):
            return _run(recipe, output_dir, device_key, recipes_dir, latency_fn, evaluate_fn, progress,
                        print_table, executor)
    finally:
        if owned:
            executor.shutdown(wait=True, cancel_futures=True)


def _run(recipe, output_dir: Path, device_key, recipes_dir, latency_fn, evaluate_fn, progress, print_table,
         executor) -> list[Step]:
    backend = recipe.search.latency_backend
    s = recipe.search
    if latency_fn is not None:  # given (tests, a precomputed table): no paired measurement, no device to name
        lat, lat_set, where = latency_fn, None, None
    else:
        lat, lat_set = make_latency_fns(recipe, output_dir, executor, device_key)
        where = latency_device_text(recipe, executor, device_key)
    # A Ray task may run in another working directory (another node): give it an absolute output path.
    ev = evaluate_fn or ProxyEvaluator(recipe, str(output_dir.resolve() if executor.kind == "ray" else output_dir))
    decision, racing = search_decision(s)
    journal = SearchJournal(output_dir / "journal.json")
    history = run_expansion(
        recipe.arch(), lat, ev, s.steps, latency_set_fn=lat_set, journal=journal, latency_device=where,
        ops=search_ops(recipe), max_k=s.max_k, executor=executor, progress=progress,
        fingerprint=journal_fingerprint(recipe, backend), seeds=s.proxy.seeds,
        decision=decision, racing=racing, warm_start=s.proxy.init == "parent",
    )
    unit = "GMACs" if backend == "macs" else "ms"
    devices = journal.latency_device_map()
    write_table(history, output_dir / "expansion.csv", output_dir / "expansion.json", latency_unit=unit,
                devices=devices)
    candidates = [c for s in history for c in s.candidates]
    plot_expansion(history, candidates, output_dir / "expansion.png", latency_unit=unit,
                   title=f"Progressive expansion: {recipe.name} ({backend}, {unit})")
    recipes_dir = Path(recipes_dir) if recipes_dir else Path("recipes") / "expanded" / output_dir.name
    write_step_recipes(recipe, history, recipes_dir)
    comparison = table4_comparison(history, unit, devices)
    if comparison is not None:  # a search from N0: its steps next to the paper's (Table 4)
        from lps_keras.fileio import atomic_write_text

        atomic_write_text(output_dir / "table4_comparison.md", comparison + "\n")
    if progress:
        progress(f"wrote {output_dir / 'expansion.csv'}, {output_dir / 'expansion.png'}"
                 + (", table4_comparison.md" if comparison is not None else "")
                 + f" and {len(history)} recipes in {recipes_dir}")
    if print_table:
        print(format_table(history, unit, devices))
    return history
