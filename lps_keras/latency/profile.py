"""A latency model per device and backend: ``predict_latency(arch, profile)``, pure numpy.

A profile is a JSON file that says where and with what it was made (backend, precision, input shape,
device, CPU flags, library versions, or "fitted to published numbers") and holds one of two models:
``kernels`` (:mod:`lps_keras.latency.kernel_model`: every 3x3 conv priced from a table of single-conv
timings on the device, plus a whole-network correction) or ``linear``, a linear model of whole-network
latency over features computed from the architecture alone (:func:`arch_features`). ``--model auto`` (the
default) times the single convs and keeps the model with the lower leave-one-out error on the training
networks (on this project's AVX2 CPU: linear for tf, onnxruntime and litert at 360x480);
``--refit`` fits a stored profile's timings again with another model, measuring nothing; ``--paper`` fits the
paper's device to Table 4 (:func:`lps_keras.latency.profile_build.paper_profile`). The linear features:

``const``            fixed cost of a forward pass (runtime overhead, input and output copies)
``gmacs_s1`` .. ``gmacs_s5``
                     3x3-conv multiply-accumulates of each stage, summed over the paths (GMACs). Per
                     stage, because a stage's resolution and width decide how well its convolutions
                     use the machine: early high-resolution, narrow stages are memory-bound, late
                     low-resolution ones overhead-bound.
``act_mb``           activation traffic: every conv's input and output tensors, fp32 (MB)
``layers``           conv layers (per-layer launch / dispatch overhead and fusion boundaries)
``resize_mpix``      pixels written by the bilinear resizes (path inputs, interactions, concat)
``head_gmacs``       the 1x1 head

The coefficients are fitted by non-negative least squares on networks measured on the device
(:mod:`lps_keras.latency.profile_build`, ``python -m lps_keras.latency.profile``), weighted by
1 / latency so the fit minimises *relative* error; the profile stores its validation on held-out
networks (share within +-10 %, Kendall tau), whose relative error (:func:`sigma_rel`) a search that
runs on the profile puts on each latency difference it decides with. A profile made on one machine
works on any other: it is refused only when the backend or input size asked for differs from the one
it describes, and warned of when it records other runtime settings (``versions``: e.g. onnxruntime's
thread spinning) than this process would time with.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from lps_keras.arch import NUM_STAGES, STAGE_STRIDES, Arch
from lps_keras.latency.profile_models import describe_profile_models, get_profile_model, profile_model_names
from lps_keras.latency.stats import LatencyError

PROFILE_FORMAT = "lps_keras.latency_profile"
PROFILE_VERSION = 1
#: The ``linear`` model's features (:func:`arch_features`); every model is an entry of
#: :mod:`lps_keras.latency.profile_models`.
FEATURES = get_profile_model("linear").features


class ProfileError(LatencyError):
    """A profile file is unreadable, or does not describe the backend / input size asked for."""


def arch_features(arch: Arch, height: int, width: int) -> np.ndarray:
    """The feature vector of ``arch`` at ``height`` x ``width`` (order: :data:`FEATURES`)."""
    stage_macs = np.zeros(NUM_STAGES)
    act = 0.0
    layers = 0
    resize = 0.0
    for p in range(arch.num_paths):
        h, w = arch.path_input_size(height, width, p)
        if arch.ratios[p] != 1.0:
            resize += h * w * 3  # the path's input resize
        c_in = 3
        for s, (stride, d, c) in enumerate(zip(STAGE_STRIDES, arch.depth, arch.width)):
            for b in range(d):
                st = stride if b == 0 else 1
                ho, wo = -(-h // st), -(-w // st)
                stage_macs[s] += ho * wo * 9 * c_in * c
                act += (h * w * c_in + ho * wo * c) * 4
                layers += 1
                h, w, c_in = ho, wo, c
    if arch.num_paths > 1:
        sizes = [arch.feature_sizes(height, width, p) for p in range(arch.num_paths)]
        for s in (2, 3):  # Bilateral-B after stages 3 and 4: each path adds every other, resized
            for p in range(arch.num_paths):
                h, w = sizes[p][s]
                resize += h * w * arch.width[s] * (arch.num_paths - 1)
        h, w = sizes[0][-1]
        resize += h * w * arch.width[-1] * (arch.num_paths - 1)  # lower paths upsampled for the concat
    oh, ow = arch.output_size(height, width)
    head = oh * ow * arch.width[-1] * arch.num_paths * arch.num_classes
    return np.array([1.0, *(stage_macs / 1e9), act / 1e6, layers, resize / 1e6, head / 1e9])


# --------------------------------------------------------------------------- the fitted model
def fit_linear(x: np.ndarray, y: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Non-negative least squares ``y ~ x @ coef`` (coefficients >= 0: no feature makes a network faster).

    Lawson-Hanson active set, small and exact enough for a dozen features; ``weights`` scale the rows.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if weights is not None:
        x = x * weights[:, None]
        y = y * weights
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns on one scale: conditioning
    a = x / scale
    n = a.shape[1]
    passive = np.zeros(n, bool)
    coef = np.zeros(n)
    for _ in range(3 * n + 10):
        grad = a.T @ (y - a @ coef)
        candidates = np.where(~passive & (grad > 1e-12 * max(1.0, np.abs(grad).max())))[0]
        if candidates.size == 0:
            break
        passive[candidates[np.argmax(grad[candidates])]] = True
        while True:
            trial = np.zeros(n)
            trial[passive] = np.linalg.lstsq(a[:, passive], y, rcond=None)[0]
            if (trial[passive] > 0).all():
                coef = trial
                break
            neg = passive & (trial <= 0)
            alpha = np.min(coef[neg] / np.maximum(coef[neg] - trial[neg], 1e-300))
            coef = coef + alpha * (trial - coef)
            passive &= coef > 1e-15
            coef[~passive] = 0.0
    return coef / scale


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two sequences (pure numpy; O(n^2), fine for the tens of networks validated)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")  # as scipy's: an unscored candidate leaves the order undefined
    # by comparison, not subtraction: slopes of candidates not slower than the parent are +-inf, and equal
    # infinities are a tie (inf - inf would be NaN)
    da = np.greater(a[:, None], a[None, :]).astype(int) - np.less(a[:, None], a[None, :]).astype(int)
    db = np.greater(b[:, None], b[None, :]).astype(int) - np.less(b[:, None], b[None, :]).astype(int)
    iu = np.triu_indices(len(a), 1)
    s = (da * db)[iu].sum()
    na, nb = (da[iu] != 0).sum(), (db[iu] != 0).sum()
    return float(s / math.sqrt(na * nb)) if na and nb else float("nan")


def accuracy_figures(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """Share within +-10 % and +-5 %, median and worst relative error, Kendall tau."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = (p - m) / m
    return {"n": int(len(m)), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "within_5pct": float(np.mean(np.abs(rel) <= 0.05)), "median_abs_rel_error": float(np.median(np.abs(rel))),
            "max_abs_rel_error": float(np.max(np.abs(rel))), "kendall_tau": kendall_tau(p, m)}


# --------------------------------------------------------------------------- files
def make_profile(coef: np.ndarray, backend: str, precision: str, input_shape, *, device: str, measured: bool,
                 source: str, residual_sd_rel: float, table=None, kind: Optional[str] = None, **extra) -> dict:
    """A profile dict (the JSON file's content) with model ``kind`` (default: ``kernels`` when a conv ``table``
    is given, else ``linear``); a model that needs the table stores it."""
    entry = get_profile_model(kind or ("kernels" if table is not None else "linear"))
    model = {"kind": entry.name, "features": list(entry.features), "coef": [float(c) for c in coef]}
    if entry.needs_table:
        if table is None:
            raise ValueError(f"the {entry.name} model needs the single-conv table")
        model["table"] = table.to_dict()
    return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "backend": backend, "precision": precision,
            "input_shape": [int(v) for v in input_shape], "device": device, "measured": bool(measured),
            "source": source, "model": model, "residual_sd_rel": float(residual_sd_rel), **extra}


def load_profile(profile: Union[str, os.PathLike, Mapping]) -> dict:
    """A profile from its file (or an already loaded dict), checked; :class:`ProfileError` names the file."""
    where = "profile" if isinstance(profile, Mapping) else str(profile)
    if isinstance(profile, Mapping):
        data = dict(profile)
    else:
        try:
            data = json.loads(Path(profile).read_text())
        except FileNotFoundError:
            raise ProfileError(f"{where}: latency profile not found") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ProfileError(f"{where}: not a readable latency profile ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{where}: not a latency profile (expected format {PROFILE_FORMAT!r})")
    if data.get("version") != PROFILE_VERSION:
        raise ProfileError(f"{where}: latency profile version {data.get('version')!r}; this code reads "
                           f"{PROFILE_VERSION}")
    try:
        model = data["model"]
        entry = get_profile_model(model["kind"]) if model["kind"] in profile_model_names() else None
        features = None if entry is None else entry.features
        if features is None or list(model["features"]) != list(features):
            raise ProfileError(f"{where}: model {model['kind']!r} over {model['features']} is not one of this "
                               f"code's models: {describe_profile_models()}")
        coef = [float(c) for c in model["coef"]]
        shape = [int(v) for v in data["input_shape"]]
        str(data["backend"])
        if entry.needs_table:
            from lps_keras.latency.kernel_model import ConvTable

            data["_table"] = ConvTable.from_dict(model["table"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileError(f"{where}: latency profile is missing or has a bad {e}") from None
    if len(coef) != len(features) or not all(math.isfinite(c) for c in coef) or len(shape) != 4:
        raise ProfileError(f"{where}: latency profile has a bad model or input shape")
    data["_where"] = where
    return data


def check_profile(profile: Mapping, backend: Optional[str] = None, input_shape=None,
                  precision: Optional[str] = None) -> None:
    """Refuse a profile made for another backend, precision or input size (one line naming both)."""
    where = profile.get("_where", "profile")
    if backend is not None and profile["backend"] != backend:
        raise ProfileError(f"{where}: the profile describes the {profile['backend']!r} backend, the search asks for "
                           f"{backend!r} (search.latency_backend); make a profile for {backend!r}")
    if precision is not None and profile.get("precision", "fp32") != precision:
        raise ProfileError(f"{where}: the profile describes precision {profile.get('precision')!r}, asked for "
                           f"{precision!r}")
    if input_shape is not None and [int(v) for v in input_shape] != list(profile["input_shape"]):
        raise ProfileError(f"{where}: the profile was made at input {profile['input_shape']}, the search times "
                           f"{[int(v) for v in input_shape]} (search.latency_input_shape); make one at that size")


def predict_latency(arch: Arch, profile: Union[str, os.PathLike, Mapping]) -> float:
    """Predicted median latency (ms) of ``arch`` on the profile's device, backend and input size."""
    prof = profile if isinstance(profile, Mapping) and "_where" in profile else load_profile(profile)
    n, h, w, _ = prof["input_shape"]
    entry = get_profile_model(prof["model"]["kind"])
    return float(n * entry.featurize(arch, h, w, prof.get("_table")) @ np.asarray(prof["model"]["coef"]))


def profile_latency_fn(profile: Union[str, os.PathLike, Mapping], backend: str, input_shape,
                       precision: str = "fp32"):
    """``arch -> ms`` from a profile checked against the search's backend and input size; deterministic.

    ``fn.sigma_rel`` is the profile's relative prediction error (:func:`sigma_rel`).
    """
    prof = load_profile(profile)
    check_profile(prof, backend, input_shape, precision)

    def fn(arch: Arch) -> float:
        return predict_latency(arch, prof)

    warn_settings(prof)
    fn.profile = prof
    fn.sigma_rel = sigma_rel(prof)
    return fn


def settings_differences(profile: Mapping) -> dict:
    """``{setting: (recorded, here)}`` for the runtime settings of the profile's backend (e.g. onnxruntime's
    thread spinning) that the profile records, in ``versions``, with another value than this process would
    time with; settings a profile does not record, and backends not in the table here, are not compared."""
    from lps_keras.latency.backends import UnknownBackendError, runtime_settings

    try:
        here = runtime_settings(profile["backend"])
    except UnknownBackendError:
        return {}
    recorded = profile.get("versions") or {}
    return {k: (recorded[k], v) for k, v in here.items() if k in recorded and str(recorded[k]) != str(v)}


def warn_settings(profile: Mapping) -> None:
    """Warn (a UserWarning naming them) when the profile was measured with other runtime settings than this process's.

    Not refused, unlike another backend or input size: the predictions stay valid for the settings the file
    records, and a profile is made to be used elsewhere; the warning says which setup they describe."""
    diff = settings_differences(profile)
    if diff:
        what = ", ".join(f"{k}={old!r} (here {new!r})" for k, (old, new) in diff.items())
        warnings.warn(f"{profile.get('_where', 'profile')}: measured with {profile['backend']} {what}; its latencies "
                      f"describe the recorded settings, not this process's", stacklevel=3)


def sigma_rel(profile: Mapping) -> float:
    """The profile's relative prediction error, the root mean square of predicted / measured - 1 (bias
    included) over networks its model did not see: a measured profile's held-out validation networks; a
    profile fitted to published numbers (``rows``: each published latency and its leave-one-out
    prediction by a fit on the others), those leave-one-out residuals; a profile with neither, the
    relative residual sd of its fit (the one figure left, and an optimistic one: the fit saw every row)."""
    rows = [r for r in profile.get("validation_rows") or () if r.get("measured_ms")]
    if rows:
        rel = np.array([r["predicted_ms"] / r["measured_ms"] - 1.0 for r in rows])
        return float(np.sqrt(np.mean(rel ** 2)))
    loo = [r for r in profile.get("rows") or () if r.get("paper_ms") and r.get("loo_ms") is not None]
    if loo:
        rel = np.array([r["loo_ms"] / r["paper_ms"] - 1.0 for r in loo])
        return float(np.sqrt(np.mean(rel ** 2)))
    return float(profile.get("residual_sd_rel", 0.0))


# --------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    """``python -m lps_keras.latency.profile``: measure and fit a profile of this device (see the module doc)."""
    import argparse

    from lps_keras.latency.backends import backend_names

    p = argparse.ArgumentParser(prog="python -m lps_keras.latency.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=[b for b in backend_names() if b != "macs"],
                   help="required unless --refit or --paper")
    p.add_argument("--input-size", default=None, help="HEIGHTxWIDTH timed (batch 1), default 360x480")
    p.add_argument("--precision", default=None, help="default fp32")
    p.add_argument("--out", required=True, help="profile JSON to write (e.g. profiles/<device>_<backend>.json)")
    p.add_argument("--num-classes", type=int, default=11, help="classes of the head (default 11: CamVid)")
    p.add_argument("--train", type=int, default=40, help="networks the model is fitted on (default 40)")
    p.add_argument("--held-out", type=int, default=30, help="random-walk networks it is validated on, besides "
                                                           "the 15 Table 4 rows (default 30)")
    p.add_argument("--max-gmacs", type=float, default=None,
                   help="skip walks past this many GMACs at the input size (bounds the time; default: none)")
    p.add_argument("--rounds", type=int, default=5, help="paired rounds per set (default 5)")
    p.add_argument("--iters", type=int, default=3, help="timed runs per network and round (default 3)")
    p.add_argument("--set-size", type=int, default=8, help="networks per paired set, N0 included (default 8)")
    p.add_argument("--model", default="auto", choices=("auto", *profile_model_names()),
                   help="the network model (lps_keras.latency.profile_models): kernels: convs priced from "
                        "single-conv timings on this device, plus a fitted whole-network correction; linear: the "
                        "whole-network linear model over GMACs per stage; auto (default): times the single convs "
                        "and keeps the model with the lower leave-one-out error on the training networks")
    p.add_argument("--refit", metavar="PROFILE", default=None,
                   help="measure nothing: fit --model again on the timings a measured profile stores, write --out")
    p.add_argument("--paper", action="store_true",
                   help="measure nothing: fit the paper's device profile (GTX 1070Ti, TensorRT FP32, 1024x2048) to "
                        "Table 4's 15 latencies, with its leave-one-out figures, and write --out "
                        "(profiles/gtx1070ti_tensorrt_fp32_paper.json is made so)")
    p.add_argument("--conv-iters", type=int, default=10, help="timed runs per single conv of the kernels table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table4", default=None, metavar="JSON",
                   help="the paper's Table 4 rows (validated too) from this JSON instead of the 15 packaged with "
                        "the project (lps_keras/presets.json); a file given and missing is an error")
    args = p.parse_args(argv)
    if args.refit is None and args.backend is None and not args.paper:
        p.error("--backend is required (or --refit PROFILE, or --paper)")
    given = [f for f in ("backend", "input_size", "precision") if getattr(args, f) is not None]
    if args.paper and (given or args.refit is not None):
        p.error(f"--paper fits the paper's device (tensorrt, fp32, 1024x2048) and measures nothing; drop "
                f"--{(given or ['refit'])[0].replace('_', '-')}")
    if args.refit is not None and given:
        p.error(f"--refit takes the backend, input size and precision from the profile; drop "
                f"--{given[0].replace('_', '-')}")
    args.input_size = args.input_size or "360x480"
    args.precision = args.precision or "fp32"
    from lps_keras.cli import guarded, quiet_tensorflow

    quiet_tensorflow()
    from lps_keras.latency.profile_build import run_profile  # the measuring half (imported here: no cycle)

    if args.paper:
        return guarded("profile", lambda: _paper(args))
    return guarded("profile", lambda: run_profile(args) if args.refit is None else _refit(args))


def _paper(args) -> int:
    from lps_keras.fileio import atomic_write_json
    from lps_keras.latency.profile_build import paper_profile

    prof = paper_profile(args.table4)
    atomic_write_json(args.out, prof)
    v = prof["leave_one_out"]
    print(f"wrote {args.out}: FITTED TO PUBLISHED NUMBERS, NOT MEASURED (Table 4, {v['n']} rows); leave-one-out "
          f"{100 * v['within_10pct']:.0f}% within +-10% (median error {100 * v['median_abs_rel_error']:.1f}%, worst "
          f"{100 * v['max_abs_rel_error']:.0f}%), Kendall tau {v['kendall_tau']:.3f}; sigma_rel "
          f"{100 * sigma_rel(prof):.1f}%", flush=True)
    return 0


def _refit(args) -> int:
    from lps_keras.fileio import atomic_write_json
    from lps_keras.latency.profile_build import refit_profile

    try:
        prof = refit_profile(args.refit, args.model)
    except (OSError, ValueError, KeyError) as e:
        raise ProfileError(f"--refit {args.refit}: {e}") from None
    atomic_write_json(args.out, prof)
    report_profile(args.out, prof)
    return 0


def report_profile(out, prof) -> None:
    """One line: the model chosen, its held-out accuracy, the measurement's own repeatability."""
    v, r, m = prof["validation"], prof["repeatability"], prof["model_selection"]
    loo = ", ".join(f"{k} {100 * e:.1f}%" for k, e in m["loo_median_abs_rel_error"].items())
    print(f"wrote {out}: model {m['chosen']} (leave-one-out on the training networks: {loo}); held-out "
          f"{v['n']} networks, {100 * v['within_10pct']:.0f}% within +-10% "
          f"(median error {100 * v['median_abs_rel_error']:.1f}%, worst {100 * v['max_abs_rel_error']:.0f}%), "
          f"Kendall tau {v['kendall_tau']:.3f}; repeatability of the measurement itself: "
          f"{100 * r['within_10pct']:.0f}% within +-10%, median {100 * r['median_abs_rel_error']:.1f}%; "
          f"{prof.get('minutes')} min", flush=True)


if __name__ == "__main__":
    from lps_keras.cli import exit_process

    exit_process(main())
