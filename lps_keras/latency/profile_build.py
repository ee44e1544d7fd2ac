"""Making latency profiles (:mod:`lps_keras.latency.profile`): measured on this device, or fitted to the paper.

``python -m lps_keras.latency.profile --backend openvino --input-size 360x480 --out profiles/<device>_openvino.json``
draws networks from the expansion space (random walks of 1-10 steps from N0, each step a random op
with k in 1..3), measures them with :func:`~lps_keras.latency.measure_set` in paired sets (N0 in
every set, so a set's drift is visible), fits the linear model on the training networks and
validates it on held-out ones (new walks plus the 15 Table 4 rows): share within +-10 % of the
measured median and Kendall's tau, beside the measurement's own repeatability (networks measured
in two different sets).

:func:`paper_profile` fits the same model, with fewer features, to the 15 latencies of the paper's
Table 4 (GTX 1070Ti, TensorRT FP32, 1024x2048): a profile *fitted to published numbers, not
measured*, with its leave-one-out error.
"""

from __future__ import annotations

import fractions
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras.arch import EXPANSION_OPS, Arch, ArchError
from lps_keras.latency.profile import (
    FEATURES,
    ProfileError,
    accuracy_figures,
    arch_features,
    fit_linear,
    make_profile,
)
from lps_keras.latency.profile_models import get_profile_model, profile_model_names

#: The paper profile's model: a + b * GMACs + d * activation traffic. 15 rows carry no more; the layer count
#: (the issue's fourth term) moves with depth alone in Table 4, and with it leave-one-out misses the smallest
#: network by 63 % (without it: 15 % at worst).
PAPER_FEATURES = ("const", "gmacs", "act_mb")

#: Feature groups that share one coefficient: "gmacs" is every convolution's MACs, whatever its stage.
GROUPS = {"gmacs": ("gmacs_s1", "gmacs_s2", "gmacs_s3", "gmacs_s4", "gmacs_s5", "head_gmacs")}


def _columns(names: Sequence[str]) -> list[list[int]]:
    cols = []
    for name in names:
        members = GROUPS.get(name, (name,))
        unknown = [m for m in members if m not in FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}")
        cols.append([FEATURES.index(m) for m in members])
    return cols


def fit_profile(archs: Sequence[Arch], ms: Sequence[float], input_shape, features: Sequence[str] = FEATURES
                ) -> tuple[np.ndarray, float]:
    """Coefficients over :data:`FEATURES` (unused ones 0; a group's members share one) and the relative
    residual sd of the fit (weighted least squares on relative error, coefficients >= 0)."""
    _, h, w, _ = input_shape
    return fit_features(np.stack([arch_features(a, h, w) for a in archs]) * input_shape[0], ms, features)


def fit_features(x: np.ndarray, ms: Sequence[float], features: Sequence[str] = FEATURES) -> tuple[np.ndarray, float]:
    """:func:`fit_profile` on the :data:`FEATURES` matrix ``x`` of measured networks (batch folded in)."""
    x = np.asarray(x, float)
    y = np.asarray(ms, float)
    cols = _columns(features)
    z = np.stack([x[:, c].sum(axis=1) for c in cols], axis=1)
    fitted = fit_linear(z, y, weights=1.0 / y)
    coef = np.zeros(len(FEATURES))
    for c, value in zip(cols, fitted):
        coef[c] = value
    rel = (x @ coef - y) / y
    dof = max(len(y) - len(cols), 1)
    return coef, float(np.sqrt(np.sum(rel ** 2) / dof))


def _held_out(archs: Sequence[Arch], ms: Sequence[float], fit, predict) -> list[float]:
    """Each network's latency predicted by ``predict(arch, fit(other archs, their ms))``: the one loop behind
    both leave-one-out figures (the paper profile's linear features, a measured profile's model kinds)."""
    out = []
    for i in range(len(archs)):
        keep = [j for j in range(len(archs)) if j != i]
        out.append(float(predict(archs[i], fit([archs[j] for j in keep], [ms[j] for j in keep]))))
    return out


def leave_one_out(archs: Sequence[Arch], ms: Sequence[float], input_shape, features: Sequence[str] = FEATURES
                  ) -> list[float]:
    """Each network's latency predicted by a linear fit of ``features`` on all the others."""
    _, h, w, _ = input_shape
    return _held_out(archs, ms, lambda a, m: fit_profile(a, m, input_shape, features)[0],
                     lambda arch, coef: input_shape[0] * arch_features(arch, h, w) @ coef)


# --------------------------------------------------------------------------- the paper's device
def table4_archs(table4_path=None, num_classes: int = 19) -> tuple[list[Arch], list[float], list[float]]:
    """The 15 Table 4 networks with the paper's latencies and mIoU: the rows packaged with the project
    (:data:`lps_keras.presets.TABLE4`) or, given ``table4_path``, that JSON's (the columns of
    ``../shared/paper/table4.json``); a given file that is missing is a :class:`ProfileError`."""
    if table4_path is None:
        from lps_keras.presets import PRESETS, TABLE4

        return ([PRESETS[name].with_num_classes(num_classes) for name in TABLE4],
                [float(row.latency_ms) for row in TABLE4.values()], [float(row.miou) for row in TABLE4.values()])
    try:
        data = json.loads(Path(table4_path).read_text())
    except FileNotFoundError:
        raise ProfileError(f"{table4_path}: Table 4 JSON not found (leave --table4 out to use the packaged "
                           f"rows)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ProfileError(f"{table4_path}: not a readable Table 4 JSON ({type(e).__name__}: {e})") from None
    archs, ms, miou = [], [], []
    try:
        for row in data["rows"]:
            rec = dict(zip(data["columns"], row))
            ratios = [float(fractions.Fraction(str(r))) for r in rec["resolution"]]
            archs.append(Arch(tuple(rec["depth"]), tuple(rec["width"]), tuple(ratios), num_classes=num_classes))
            ms.append(float(rec["latency_ms"]))
            miou.append(float(rec["miou"]))
    except (KeyError, TypeError, ValueError, ArchError) as e:
        raise ProfileError(f"{table4_path}: not a Table 4 JSON ({type(e).__name__}: {e})") from None
    return archs, ms, miou


def paper_profile(table4_path=None) -> dict:
    """The GTX 1070Ti / TensorRT FP32 / 1024x2048 profile fitted to Table 4 (the packaged rows, or
    ``table4_path``'s), with leave-one-out figures."""
    archs, ms, _ = table4_archs(table4_path)
    shape = (1, 1024, 2048, 3)
    coef, sd = fit_profile(archs, ms, shape, PAPER_FEATURES)
    loo = leave_one_out(archs, ms, shape, PAPER_FEATURES)
    rows = [{"step": i, "arch": str(a), "paper_ms": m, "fit_ms": round(predict_with(coef, a, shape), 3),
             "loo_ms": round(p, 3)} for i, (a, m, p) in enumerate(zip(archs, ms, loo))]
    return make_profile(
        coef, "tensorrt", "fp32", shape, device="GPU:NVIDIA GeForce GTX 1070 Ti (paper)", measured=False,
        source="FITTED TO PUBLISHED NUMBERS, NOT MEASURED: the 15 latencies of the LPS-Net paper's Table 4 "
               "(TensorRT FP32, batch 1, 1024x2048, GTX 1070Ti): latency = a + b * GMACs + d * activation MB, "
               "least squares on relative error",
        residual_sd_rel=sd, leave_one_out=accuracy_figures(loo, ms), rows=rows)


def predict_with(coef: np.ndarray, arch: Arch, input_shape) -> float:
    _, h, w, _ = input_shape
    return float(input_shape[0] * arch_features(arch, h, w) @ coef)


# --------------------------------------------------------------------------- measured profiles
def random_walks(n: int, seed: int, start: Arch, max_steps: int = 10, max_k: int = 3,
                 accept: Optional[Callable[[Arch], bool]] = None, exclude: Sequence[str] = ()) -> list[Arch]:
    """``n`` distinct networks reached from ``start`` by 1..max_steps random expansion ops (k in 1..max_k)."""
    rng = np.random.default_rng(seed)
    seen = set(exclude) | {start.hash}
    out: list[Arch] = []
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        arch = start
        for _ in range(int(rng.integers(1, max_steps + 1))):
            op = EXPANSION_OPS[int(rng.integers(len(EXPANSION_OPS)))]
            try:
                nxt = arch.expand(op, int(rng.integers(1, max_k + 1)))
            except ArchError:
                continue
            if accept is not None and not accept(nxt):
                break
            arch = nxt
        if arch.hash not in seen:
            seen.add(arch.hash)
            out.append(arch)
    return out


def measure_archs(archs: Sequence[Arch], anchor: Arch, measure_set: Callable, set_size: int = 8,
                  say: Callable[[str], None] = print) -> dict[str, float]:
    """Median ms per arch hash, measured in paired sets of ``set_size`` (``anchor`` first in each)."""
    out: dict[str, float] = {}
    todo = [a for a in archs if a.hash != anchor.hash]
    sets = [todo[i:i + set_size - 1] for i in range(0, len(todo), set_size - 1)]
    t0 = time.perf_counter()
    for k, chunk in enumerate(sets):
        result = measure_set([anchor, *chunk])
        out.setdefault(anchor.hash, float(result.median_ms[0]))
        for a, m in zip(chunk, result.median_ms[1:]):
            out[a.hash] = float(m)
        eta = (time.perf_counter() - t0) / (k + 1) * (len(sets) - k - 1)
        say(f"  set {k + 1}/{len(sets)}: {len(chunk) + 1} networks, anchor {result.median_ms[0]:.3f} ms "
            f"(ETA {eta:.0f} s)")
    return out


# --------------------------------------------------------------------------- which model, fitted and validated
def network_features(kind: str, arch: Arch, input_shape, table=None) -> np.ndarray:
    """The feature vector of ``arch`` under model ``kind`` (batch folded in, as predict_latency does)."""
    n, h, w, _ = input_shape
    return n * get_profile_model(kind).featurize(arch, h, w, table)


def fit_network(kind: str, archs: Sequence[Arch], ms: Sequence[float], input_shape, table=None):
    """(coef, relative residual sd) of model ``kind`` fitted on measured networks (both weight relative error)."""
    return get_profile_model(kind).fit(np.stack([network_features(kind, a, input_shape, table) for a in archs]), ms)


def loo_median_error(kind: str, archs: Sequence[Arch], ms: Sequence[float], input_shape, table=None) -> float:
    """Median |relative error| of each training network predicted by a fit on all the others."""
    pred = _held_out(archs, ms, lambda a, m: fit_network(kind, a, m, input_shape, table)[0],
                     lambda arch, coef: network_features(kind, arch, input_shape, table) @ coef)
    return float(np.median([abs(p / m - 1.0) for p, m in zip(pred, ms)]))


def choose_model(model: str, archs: Sequence[Arch], ms: Sequence[float], input_shape, table=None
                 ) -> tuple[str, dict[str, float]]:
    """``model`` itself, or for ``auto`` the kind with the lower leave-one-out error on the *training*
    networks (the held-out ones stay unseen until validation); with the leave-one-out errors compared."""
    if model == "auto":
        kinds = [k for k in profile_model_names() if table is not None or not get_profile_model(k).needs_table]
    else:
        kinds = [model]
        if get_profile_model(model).needs_table and table is None:
            raise ValueError(f"the {model} model needs the single-conv table, and this profile has none")
    loo = {k: loo_median_error(k, archs, ms, input_shape, table) for k in kinds}
    return min(loo, key=loo.get), loo


def finish_profile(model: str, table, train: Sequence[tuple[Arch, float]], held: Sequence[tuple[str, Arch, float]],
                   repeatability: dict, *, backend: str, precision: str, input_shape, device: str, source: str,
                   **extra) -> dict:
    """A measured profile: the model chosen (:func:`choose_model`) and fitted on ``train`` (arch, ms), then
    validated on ``held`` (kind, arch, ms): share within +-10 %, Kendall tau; the conv table is kept even
    when the linear model wins, so the profile can be refitted without measuring again."""
    from lps_keras.latency.profile import predict_latency

    archs, ms = [a for a, _ in train], [m for _, m in train]
    kind, loo = choose_model(model, archs, ms, input_shape, table)
    coef, sd = fit_network(kind, archs, ms, input_shape, table)
    prof = make_profile(coef, backend, precision, input_shape, device=device, measured=True, source=source,
                        residual_sd_rel=sd, table=table if get_profile_model(kind).needs_table else None,
                        kind=kind, **extra)
    prof["model_selection"] = {"asked": model, "chosen": kind, "loo_median_abs_rel_error": loo,
                               "by": "leave-one-out on the training networks"}
    if table is not None and not get_profile_model(kind).needs_table:
        prof["conv_table"] = table.to_dict()
    prof["_where"], prof["_table"] = "(being built)", table
    rows = [{"kind": k, "arch": a.to_dict(), "name": str(a), "measured_ms": round(m, 4),
             "predicted_ms": round(predict_latency(a, prof), 4)} for k, a, m in held]
    prof.pop("_where"), prof.pop("_table")
    prof["validation"] = accuracy_figures([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    prof["validation_rows"] = rows
    prof["repeatability"] = repeatability
    prof["training_rows"] = [{"arch": a.to_dict(), "measured_ms": round(m, 4)} for a, m in train]
    return prof


def refit_profile(path, model: str = "auto") -> dict:
    """A measured profile fitted again from the timings it stores (another model; nothing measured)."""
    from lps_keras.latency.kernel_model import ConvTable

    prof = json.loads(Path(path).read_text())
    if not isinstance(prof, dict) or not prof.get("measured") or not {"training_rows", "validation_rows"} <= set(prof):
        raise ValueError("not a measured profile with its training and validation rows")
    stored = prof["model"].get("table") or prof.get("conv_table")
    table = None if stored is None else ConvTable.from_dict(stored)
    keep = {k: prof[k] for k in ("cpu_flags", "versions", "settings_note", "num_classes", "minutes") if k in prof}
    return finish_profile(
        model, table, [(Arch.from_dict(r["arch"]), r["measured_ms"]) for r in prof["training_rows"]],
        [(r["kind"], Arch.from_dict(r["arch"]), r["measured_ms"]) for r in prof["validation_rows"]],
        prof["repeatability"], backend=prof["backend"], precision=prof["precision"],
        input_shape=tuple(prof["input_shape"]), device=prof["device"],
        source=f"{prof['source']}; refitted ({model}) from its stored timings on {time.strftime('%Y-%m-%d')}", **keep)


def run_profile(args) -> int:
    """``python -m lps_keras.latency.profile``'s measurement: the designed networks timed in paired sets, the
    conv table, the fit and its validation, written to ``args.out`` (the parsed command line)."""
    import time

    from lps_keras.fileio import atomic_write_json
    from lps_keras.latency import backends, measure_set
    from lps_keras.latency.backends import device_name, library_versions
    from lps_keras.latency.profile import accuracy_figures, report_profile
    from lps_keras.latency.stats import cpu_flags
    from lps_keras.presets import get_preset
    from lps_keras.recipe import parse_size

    t0 = time.time()
    h, w = parse_size(args.input_size)
    accept = None if args.max_gmacs is None else (lambda a: a.macs(h, w) / 1e9 <= args.max_gmacs)
    # first: a --table4 file that is not there stops the run before anything is loaded or timed
    table4 = [a for a in table4_archs(args.table4, args.num_classes)[0] if accept is None or accept(a)]
    if args.backend == "tf":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # one tf.function per network is the point here, not a retracing bug
    shape = (1, h, w, 3)
    backends.check_backend(args.backend, args.precision)
    n0 = get_preset("lps_tiny", num_classes=args.num_classes)
    train = random_walks(args.train, args.seed, n0, accept=accept)
    held = random_walks(args.held_out, args.seed + 1, n0, accept=accept, exclude=[a.hash for a in train])
    again = held[: min(8, len(held))]  # measured in a second set: the measurement's own repeatability
    store = Path(args.out).with_name(Path(args.out).stem + "_artifacts")

    def paired(archs):
        return measure_set(archs, args.backend, shape, rounds=args.rounds, iters_per_round=args.iters,
                           warmup=2, precision=args.precision, artifacts=store if args.backend != "tf" else None)

    print(f"profile {args.backend}/{args.precision} at {h}x{w}: {len(train)} training, {len(held)} held-out "
          f"and {len(table4)} Table 4 networks, in paired sets of {args.set_size}", flush=True)
    table = None
    if args.model == "auto" or get_profile_model(args.model).needs_table:
        from lps_keras.latency.kernel_model import ConvTable, measure_grid

        print("timing the single convs of the kernels table", flush=True)
        table = ConvTable(measure_grid(lambda spec: time_conv(spec, args)))
    ms = measure_archs([*train, *held, *table4], n0, paired, args.set_size)
    repeat = measure_archs(list(reversed(again)), n0, paired, args.set_size)
    prof = finish_profile(
        args.model, table, [(a, ms[a.hash]) for a in [n0, *train]],
        [(kind, a, ms[a.hash]) for kind, archs in (("held-out walk", held), ("table4", table4)) for a in archs],
        accuracy_figures([repeat[a.hash] for a in again], [ms[a.hash] for a in again]),
        backend=args.backend, precision=args.precision, input_shape=shape, device=device_name(args.backend),
        source=f"measured with python -m lps_keras.latency.profile on {time.strftime('%Y-%m-%d')}",
        cpu_flags=cpu_flags(), versions=library_versions(args.backend), num_classes=args.num_classes,
        minutes=round((time.time() - t0) / 60, 1))
    atomic_write_json(args.out, prof)
    report_profile(args.out, prof)
    return 0


def time_conv(spec, args) -> float:
    """ms of one 3x3 conv + bias + ReLU as the deploy graph runs it (stride 2: the explicit 1-pixel pad)."""
    import keras

    from lps_keras.latency import measure_latency

    h, w, c_in, c_out, stride = spec
    shape = (1, h * stride, w * stride, c_in)
    x = keras.Input(shape[1:])
    y = keras.layers.ZeroPadding2D(1)(x) if stride == 2 else x
    y = keras.layers.Conv2D(c_out, 3, strides=stride, padding="valid" if stride == 2 else "same",
                            activation="relu")(y)
    return measure_latency(keras.Model(x, y), args.backend, shape, warmup=2, iters=args.conv_iters,
                           precision=args.precision).median_ms
