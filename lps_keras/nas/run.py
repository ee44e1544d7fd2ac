"""A whole search from a recipe (``search.py``): budget, latency table, search, derived network.

Four phases, each kept in the run directory, so that rerunning the same command (after Ctrl-C or
``kill -9``) continues where it stopped:

1. **budget** (``budget.json``): ``nas.budget_ms``, or the latency of the LPS-Net ``nas.budget_arch``
   (e.g. the greedy expansion's final network) measured on ``nas.latency_backend`` at
   ``nas.latency_input_size``; times ``nas.budget_scale``.
2. **table** (``latency_table.json``, saved after every entry): every operator of the space timed on
   the same backend, then calibrated once on the hand-designed base network timed whole
   (:func:`~.latency_table.calibrate_table`: stem, head and per-call overhead go into ``fixed_ms``).
   ``nas.latency_table`` uses a table built elsewhere (on the target device: ``--table-only`` stops here)
   instead; from another device than the budget's, only with ``nas.budget_ms`` (that device's time).
3. **search** (``search.npz`` every ``nas.checkpoint_interval`` steps, ``log.jsonl``): weights and
   alphas in one step (:class:`~.search_tf.Search`) on the recipe's training images, augmented as
   training augments them, with the recipe's task loss (``train.loss``, class balance).
4. **derive** (``derived.json``, ``derived_recipe.json``): the argmax network as a plain family
   config, its table latency, its measured latency (labelled with this machine's device, and the
   table's) timed in paired rounds beside the budget's network, and a training recipe for it (the
   search recipe's ``data``/``train``/``eval``/``export``).

``cost.json`` adds up each phase's wall time over every run of the directory; ``derived.json``'s
``cost`` reports it with the core count (the search cost in CPU-hours, on a machine it had to itself).

``search_recipe.json`` records what the directory searches; a rerun with other search settings is
refused naming the first key that differs, ``nas.steps`` included: the learning-rate and temperature
schedules are sized by it, so a longer rerun would raise the temperature and the learning rate of a
finished search again instead of continuing it (search longer in another directory). A table
from ``nas.latency_table`` is recorded by content (``latency_table_source.json``, its SHA-256), not
by path: the same table at another path continues the search, another table at the same path (rebuilt
on another device) is refused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lps_keras.fileio import DirectoryLock, atomic_write_json, remove_stale_temps
from lps_keras.nas.cost import SearchCost
from lps_keras.nas.errors import NASError
from lps_keras.recipe import dotted, recipe_from_dict

#: Keys of a search recipe that may change between runs of one search directory.
MUTABLE_KEYS = ("name", "description", "nas.checkpoint_interval", "nas.log_interval", "nas.run_dir",
                "nas.run_eagerly",
                "nas.latency_rounds", "nas.latency_table", "train.run_dir", "eval", "export")


def run_search(recipe, run_dir=None, log: Callable[[str], None] = print, table_only: bool = False) -> dict:
    """Run (or continue) the search of ``recipe``; returns ``derived.json``'s content.

    ``table_only`` (``search.py --table-only``, on the target device): stop after the table phase (and the
    budget phase, when the recipe has a budget); returns ``{"table", "device", "budget"}``: the table to
    carry to the machine that searches, and the budget's reference latency on this device.
    """
    cfg = recipe.nas
    if table_only and cfg.latency_table is not None:
        raise NASError("nas.latency_table: --table-only builds this machine's table; drop nas.latency_table "
                       "(--latency-table)")
    has_budget = cfg.budget_ms is not None or cfg.budget_arch is not None
    if not has_budget and not table_only:
        raise NASError("nas.budget_ms / nas.budget_arch: the search needs a latency budget: a number of ms, or "
                       "the LPS-Net architecture whose latency it is")
    from lps_keras.nas import space_entry

    entry = space_entry(cfg.space)
    if recipe.model.family != entry.family:
        raise NASError(f"model.family: the {cfg.space!r} space searches {entry.base} (model.family "
                       f"{entry.family!r}); got {recipe.model.family!r}")
    recipe.check_classes_cover_dataset()
    run_dir = Path(run_dir or cfg.run_dir.format(name=recipe.name))
    started = time.time()  # files newer than this are this run's (the lock, the recipe record)
    with DirectoryLock(run_dir, "search directory"):
        remove_stale_temps(run_dir)
        _check_same_search(run_dir / "search_recipe.json", recipe)
        num_classes = recipe.model_config().num_classes  # the budget's network gets the same head as the searched one
        cost = SearchCost(run_dir / "cost.json", started)
        _check_table_device(run_dir / "budget.json", cfg)  # before a budget is timed here for nothing
        budget = None
        if has_budget:
            with cost.phase("budget"):
                budget = _budget(run_dir / "budget.json", cfg, num_classes, log)
        with cost.phase("table"):
            table = _table(run_dir, recipe, log)
        if table_only:
            return _table_only_report(run_dir, recipe, table, budget, log)
        with cost.phase("search"):
            search = _search(run_dir, recipe, table, budget["budget_ms"], log)
        with cost.phase("derive"):
            derived = _derive(run_dir, recipe, search, table, budget, log)
        derived["cost"] = cost.summary()
        atomic_write_json(run_dir / "derived.json", derived)
        # Last: its existence says the search is complete (derived.json with its cost included).
        atomic_write_json(run_dir / "derived_recipe.json", derived_recipe(recipe, search.derive()))
        log(f"[cost] {derived['cost']['wall_hours']:.2f} h of wall time on {derived['cost']['cpu_count']} cores "
            f"(table {cost.seconds.get('table', 0) / 60:.0f} min, search {cost.seconds.get('search', 0) / 60:.0f} min)")
        return derived


def measure_kwargs(cfg) -> dict:
    return {"warmup": cfg.latency_warmup, "iters": cfg.latency_iters}


# ------------------------------------------------------------------------------------------- phases
def _check_same_search(path: Path, recipe) -> None:
    current = dotted(recipe.to_dict(), leaves=_LEAVES)
    if path.exists():
        raw = json.loads(path.read_text())
        try:  # through the loader, so a key added since (at its default) compares equal to its absence
            raw = recipe_from_dict(raw, source=str(path)).to_dict()
        except Exception:  # an unloadable record is compared as written; the message names the key
            pass
        saved = dotted(raw, leaves=_LEAVES)
        for key in sorted(set(saved) | set(current)):
            if key.startswith(MUTABLE_KEYS) or saved.get(key) == current.get(key):
                continue
            raise NASError(f"{path.parent}: this search directory holds a search with {key} = "
                           f"{json.dumps(saved.get(key))}, not {json.dumps(current.get(key))}; rerun with the "
                           "same recipe to continue it, or use another --run-dir")
    atomic_write_json(path, recipe.to_dict())


#: Recipe values compared whole when a rerun's settings are checked (an architecture is one setting).
_LEAVES = ("arch", "config", "budget_arch")


def _budget(path: Path, cfg, num_classes: int, log) -> dict:
    if path.exists():
        budget = json.loads(path.read_text())
    else:
        h, w = cfg.latency_input_size
        if cfg.budget_ms is not None:
            budget = {"source": "nas.budget_ms", "reference_ms": float(cfg.budget_ms)}
        else:
            from lps_keras.arch import Arch
            from lps_keras.latency import measure_latency

            arch = Arch.from_dict({**cfg.budget_arch, "num_classes": num_classes})
            log(f"[budget] timing nas.budget_arch {arch.short()} on {cfg.latency_backend} at {h}x{w}")
            stats = measure_latency(arch, backend=cfg.latency_backend, input_shape=(1, h, w, 3), **measure_kwargs(cfg))
            budget = {"source": "nas.budget_arch", "arch": cfg.budget_arch, "num_classes": num_classes,
                      "reference_ms": float(stats.median_ms), "device": stats.device}
        budget.update(backend=cfg.latency_backend, input_size=[h, w])
        atomic_write_json(path, budget)
    budget["budget_ms"] = budget["reference_ms"] * cfg.budget_scale
    log(f"[budget] {budget['budget_ms']:.3f} ms ({budget['source']}, {budget['reference_ms']:.3f} ms x "
        f"{cfg.budget_scale:g}) on {cfg.latency_backend} at {budget['input_size'][0]}x{budget['input_size'][1]}")
    return budget


def _check_table_device(budget_path: Path, cfg) -> None:
    """An external table from another device than the budget's: refuse ``nas.budget_arch``.

    The budget's network is timed on this machine (or was, by budget.json's ``device``), the table's
    operators on the table's device: a search would pull one machine's expected latency toward another
    machine's budget. A table that names no device is taken to be this machine's.
    """
    from lps_keras.nas.latency_table import LatencyTable, device_label

    if cfg.latency_table is None or cfg.budget_arch is None:
        return
    table = LatencyTable.load(cfg.latency_table, backend=cfg.latency_backend)
    saved = json.loads(budget_path.read_text()) if budget_path.exists() else {}
    budget_device = saved.get("device") or device_label(cfg.latency_backend)
    if table.device and budget_device and table.device != budget_device:
        raise NASError(f"nas.budget_arch: the latency table {cfg.latency_table} was measured on {table.device!r}, "
                       f"the budget's network is timed on {budget_device!r}; give nas.budget_ms (--budget-ms) "
                       "measured on the table's device (search.py --table-only there prints it)")


def _table_only_report(run_dir: Path, recipe, table, budget, log) -> dict:
    """What ``--table-only`` leaves: the table, its device, and how to search with it elsewhere."""
    path = run_dir / "latency_table.json"
    carry = f"--latency-table <copy of {path}>"
    if budget is not None:
        carry += f" --budget-ms {budget['reference_ms']:.4g}"  # the reference: nas.budget_scale applies there
    log(f"[table] {path}: {len(table.entries)} operators timed on {table.device or 'an unnamed device'}; to "
        f"search on another machine with it: python search.py --recipe <recipe> {carry}")
    return {"table": str(path), "device": table.device, "budget": budget}


def _space(recipe):
    from lps_keras.nas import get_space

    return get_space(recipe.nas.space, base=recipe.model_config())


def _table(run_dir: Path, recipe, log):
    from lps_keras.nas.latency_table import LatencyTable, build_latency_table, calibrate_table

    cfg = recipe.nas
    size = tuple(cfg.latency_input_size)
    space = _space(recipe)
    built, source = run_dir / "latency_table.json", run_dir / "latency_table_source.json"
    if cfg.latency_table is not None and built.exists():
        raise NASError(f"nas.latency_table: {run_dir} searched with the table it built here ({built}); rerun "
                       "without nas.latency_table to continue it, or use another --run-dir")
    if cfg.latency_table is None and source.exists():
        raise NASError(f"nas.latency_table: {run_dir} searched with the table "
                       f"{json.loads(source.read_text()).get('path')}; rerun with it to continue, or use another "
                       "--run-dir")
    if cfg.latency_table is not None:
        table = LatencyTable.load(cfg.latency_table, backend=cfg.latency_backend)
        missing = [s.key for s in space.op_specs(size) if s not in table]
        if missing:
            raise NASError(f"nas.latency_table: {cfg.latency_table} has no entry {missing[0]!r} (and "
                           f"{len(missing) - 1} more): it was built for another space or input size")
        _check_same_table(source, cfg.latency_table)
        device = table.device or "an unnamed device"
        log(f"[table] {cfg.latency_table}: {len(table.entries)} operators timed on {device}, fixed "
            f"{table.fixed_ms:.3f} ms")
        return table
    path = built
    t0, last = time.time(), [0.0]

    def progress(done, total):
        if time.time() - last[0] > 30 or done == total:
            last[0] = time.time()
            log(f"[table] {done}/{total} operators timed on {cfg.latency_backend} ({time.time() - t0:.0f} s)")

    table = build_latency_table(space, size, backend=cfg.latency_backend, path=path, progress=progress,
                                **measure_kwargs(cfg))
    table = calibrate_table(space, table, size, cfg.latency_backend, path=path, **measure_kwargs(cfg))
    c = table.calibration or {}
    log(f"[table] {len(table.entries)} operators; the base network {c.get('network_ms', math.nan):.3f} ms whole, "
        f"{c.get('ops_ms', math.nan):.3f} ms as its operators' sum: fixed {table.fixed_ms:+.3f} ms")
    return table


def _check_same_table(record: Path, table_path: str) -> None:
    """Record the external table's SHA-256 on the first run; refuse a rerun whose table differs."""
    from lps_keras.fileio import file_sha256

    digest = file_sha256(table_path)
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("sha256") != digest:
            raise NASError(f"nas.latency_table: {table_path} is not the table this search directory was searched "
                           f"with ({saved.get('path')}, SHA-256 {str(saved.get('sha256'))[:16]}, now "
                           f"{digest[:16]}); rerun with that table to continue, or use another --run-dir")
        return
    atomic_write_json(record, {"path": str(table_path), "sha256": digest})


def _search(run_dir: Path, recipe, table, budget_ms: float, log):
    import keras

    from lps_keras.class_balance import class_weights
    from lps_keras.losses import build_loss
    from lps_keras.nas.gumbel import TemperatureSchedule
    from lps_keras.nas.search_tf import Search
    from lps_keras.train.optim import PolyLR, TorchSGD

    cfg = recipe.nas
    keras.utils.set_random_seed(cfg.seed)
    space = _space(recipe)
    search = Search(
        space, table, cfg.latency_input_size, budget_ms, build_loss(recipe.train, class_weights(recipe)),
        TorchSGD(PolyLR(cfg.weight_lr, cfg.steps), momentum=cfg.weight_momentum, l2=cfg.weight_decay),
        keras.optimizers.Adam(cfg.arch_lr, beta_1=0.5, beta_2=0.999, weight_decay=cfg.arch_weight_decay),
        TemperatureSchedule(cfg.tau_start, cfg.tau_end, cfg.steps), cost_weight=cfg.cost_weight, seed=cfg.seed,
        run_eagerly=cfg.run_eagerly)
    checkpoint = run_dir / "search.npz"
    log_path = run_dir / "log.jsonl"
    if checkpoint.exists():
        search.restore(checkpoint)
        _truncate_log(log_path, search.step)
        log(f"[search] resumed at step {search.step}/{cfg.steps}")
    if search.step >= cfg.steps:
        return search
    from lps_keras.nas.batches import TrainingBatches

    data = TrainingBatches(recipe, log)
    last = [time.time(), search.step]  # the rate since the last line: the first steps pay the trace

    def on_step(step, out):
        if step % cfg.log_interval and step != cfg.steps:
            return
        record = {"step": step, "tau": search.schedule(step - 1), "time": time.time(), **out}
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        rate = (time.time() - last[0]) / max(1, step - last[1])
        last[:] = [time.time(), step]
        log(f"[search] step {step}/{cfg.steps}  tau {record['tau']:.2f}  task {out['task']:.3f}  "
            f"E[lat] {out['expected_ms']:.3f} ms (budget {budget_ms:.3f})  {rate:.2f} s/step, "
            f"{rate * (cfg.steps - step) / 60:.0f} min left")

    search.run(data, cfg.steps, checkpoint=checkpoint, every=cfg.checkpoint_interval, on_step=on_step)
    return search


def _truncate_log(path: Path, step: int) -> None:
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        from lps_keras.fileio import atomic_write_text

        atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def _derive(run_dir: Path, recipe, search, table, budget: dict, log) -> dict:
    from lps_keras.nas.latency_table import table_latency

    cfg = recipe.nas
    config = search.derive()
    alphas = search.alphas()
    choices = [int(np.argmax(a)) for a in alphas]
    predicted = table_latency(search.space, table, cfg.latency_input_size, choices)
    path = run_dir / "derived.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    if previous.get("config") == config.to_dict() and (previous.get("measured") or {}).get("derived_ms") is not None:
        measured = previous["measured"]
    elif missing := _untimeable_here(cfg):  # searched for another device with its table: nothing to time it on
        measured = {"derived_ms": None, "device": None, "not_measured": missing}
    else:  # (a directory that was searched elsewhere is timed when it is resumed where the backend is)
        measured = _measure_derived(config, budget, cfg, log)
    # The measured time is this machine's; the table's latency and the budget may be another device's.
    measured = {**measured, "table_device": table.device}
    same_device = not table.device or measured.get("device") == table.device
    derived = {
        "family": recipe.model.family, "space": cfg.space, "steps": search.step, "config": config.to_dict(),
        "table_ms": predicted, "budget_ms": budget["budget_ms"], "budget": budget, "measured": measured,
        "alphas": [np.round(a, 4).tolist() for a in alphas],
    }
    atomic_write_json(path, derived)
    m, b = measured["derived_ms"], budget["budget_ms"]
    if m is None:
        timed = (f"budget {b:.3f} ms ({100 * (predicted / b - 1):+.1f}%) on the table's device "
                 f"{table.device or '(unnamed)'}; not timed here ({measured['not_measured']}): time it there")
    elif same_device:
        timed = f"measured {m:.3f} ms on {measured.get('device')}, budget {b:.3f} ms ({100 * (m / b - 1):+.1f}%)"
    else:
        timed = (f"budget {b:.3f} ms ({100 * (predicted / b - 1):+.1f}%) on the table's device {table.device}; "
                 f"measured {m:.3f} ms on {measured.get('device')}, not the table's device")
    log(f"[derive] {run_dir / 'derived.json'}: table {predicted:.3f} ms, {timed}; train it with "
        f"python train.py --recipe {run_dir / 'derived_recipe.json'}")
    return derived


def needs_backend_here(cfg) -> bool:
    """Whether a search times anything on this machine: not with another device's table (``nas.latency_table``)
    and its budget in ms, whose backend is needed only there (``search.py`` checks it up front otherwise)."""
    return cfg.latency_table is None or cfg.budget_ms is None


def _untimeable_here(cfg) -> str:
    """Why the derived network cannot be timed on this machine ("" when it can)."""
    from lps_keras.latency import check_backend
    from lps_keras.latency.stats import LatencyError

    try:
        check_backend(cfg.latency_backend)
    except LatencyError as e:
        if needs_backend_here(cfg):
            raise
        return str(e)
    return ""


def _measure_derived(config, budget: dict, cfg, log) -> dict:
    """The derived network's latency; beside the budget's network in paired rounds when there is one."""
    from lps_keras.latency import measure_latency, measure_set

    h, w = cfg.latency_input_size
    shape = (1, h, w, 3)
    if budget.get("arch") is None:
        stats = measure_latency(config, backend=cfg.latency_backend, input_shape=shape, **measure_kwargs(cfg))
        return {"derived_ms": float(stats.median_ms), "device": stats.device}
    from lps_keras.arch import Arch

    arch = Arch.from_dict({**budget["arch"], "num_classes": config.num_classes})
    log(f"[derive] timing the derived network beside {arch.short()} ({cfg.latency_rounds} paired rounds)")
    m = measure_set([arch, config], backend=cfg.latency_backend, input_shape=shape, rounds=cfg.latency_rounds)
    ref, derived = (float(v) for v in m.median_ms)
    # The budget scales the reference's time measured now: the machine's speed then and now need not agree.
    return {"derived_ms": derived, "reference_ms": ref, "budget_now_ms": ref * cfg.budget_scale,
            "delta_ms": float(m.delta_ms[1]), "delta_se_ms": float(m.delta_se_ms[1]), "device": m.device}


def derived_recipe(recipe, config) -> dict:
    """The search recipe with the derived network as its model, ready for ``train.py``."""
    d = recipe.to_dict()
    name = f"{recipe.name}_derived"
    model_config = {k: v for k, v in config.to_dict().items() if k != "num_classes"}
    d.update(name=name, description=f"The network derived by search.py from {recipe.name} "
                                    f"({recipe.nas.space} space, {recipe.nas.steps} steps), trained from scratch.")
    d["model"] = {**d["model"], "preset": None, "config": model_config, "num_classes": config.num_classes}
    d.pop("nas", None)
    d["export"] = {**d["export"], "name": name}
    return d
