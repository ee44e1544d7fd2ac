"""The latency profiles' validation figures, read from the files (nothing is timed).

    python benchmarks/latency_profiles.py                       # every profiles/*.json
    python benchmarks/latency_profiles.py profiles/a.json docs/b.json

For each measured profile (``python -m lps_keras.latency.profile``): where and with what it was measured
(device, backend and its version, runtime settings, precision and input size), the model chosen and the
leave-one-out errors that chose it, and its validation on held-out networks (share within +-10 % of the
measured median, median and worst relative error, Kendall tau) beside the measurement's own repeatability
(networks measured in two paired sets) and the minutes it took: the README's table, row for row. For a
profile fitted to published numbers (the paper's device, ``--paper``): its leave-one-out figures on those
numbers and the sigma_rel a search on it puts on each latency difference. The figures are the ones the
files store; the rows are printed in the order given (the default: sorted by file name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lps_keras.errors import LPSError  # noqa: E402 - after the path set-up above

MEASURED_HEADER = ("file", "device", "backend", "settings", "precision, input", "model (leave-one-out on training "
                   "nets)", "held-out networks", "within ±10 %", "median error", "worst", "Kendall τ",
                   "repeatability (two sets): within ±10 % / median", "minutes")
PAPER_HEADER = ("file", "device", "backend", "precision, input", "rows", "leave-one-out: within ±10 %",
                "median error", "worst", "Kendall τ", "σ_rel (RMS)")

def pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f} %"


def setting_names(backend: str) -> tuple[str, ...]:
    """The entries of a profile's ``versions`` that are runtime settings of its backend (the backend table's)."""
    from lps_keras.latency.backends import runtime_settings
    from lps_keras.latency.stats import LatencyError

    try:
        return tuple(runtime_settings(backend))
    except LatencyError:  # a backend not in this table: every entry is a library version
        return ()


def backend_version(prof: dict) -> str:
    """``openvino 2026.4``: the backend and the major.minor of the first library its versions name."""
    names = setting_names(prof["backend"])
    libs = [v for k, v in (prof.get("versions") or {}).items() if k not in names]
    if not libs:
        return prof["backend"]
    return f"{prof['backend']} {'.'.join(str(libs[0]).split('-')[0].split('.')[:2])}"


def settings(prof: dict) -> str:
    versions = prof.get("versions") or {}
    return ", ".join(f"{k} {versions[k]}" for k in setting_names(prof["backend"]) if k in versions) or "-"


def shape_text(prof: dict) -> str:
    return f"{prof.get('precision', 'fp32')}, {'×'.join(str(v) for v in prof['input_shape'])}"


def model_text(prof: dict) -> str:
    """``linear (10.4 %; kernels 12.0 %)``: the chosen model's leave-one-out error first, then the others'."""
    sel = prof.get("model_selection") or {}
    loo = sel.get("loo_median_abs_rel_error") or {}
    chosen = sel.get("chosen", prof["model"]["kind"])
    if chosen not in loo:
        return chosen
    others = "".join(f"; {k} {pct(v, 1)}" for k, v in loo.items() if k != chosen)
    return f"{chosen} ({pct(loo[chosen], 1)}{others})"


def measured_row(name: str, prof: dict) -> tuple[str, ...]:
    v, r = prof["validation"], prof.get("repeatability") or {}
    repeat = f"{pct(r['within_10pct'])} / {pct(r['median_abs_rel_error'], 1)}" if r.get("n") else "-"
    minutes = prof.get("minutes")
    return (name, prof["device"], backend_version(prof), settings(prof), shape_text(prof), model_text(prof),
            str(v["n"]), pct(v["within_10pct"]), pct(v["median_abs_rel_error"], 1), pct(v["max_abs_rel_error"]),
            f"{v['kendall_tau']:.3f}", repeat, "-" if minutes is None else f"{minutes:.1f}")


def paper_row(name: str, prof: dict) -> tuple[str, ...]:
    from lps_keras.latency.profile import sigma_rel

    v = prof["leave_one_out"]
    return (name, prof["device"], prof["backend"], shape_text(prof), str(v["n"]), pct(v["within_10pct"]),
            pct(v["median_abs_rel_error"], 1), pct(v["max_abs_rel_error"]), f"{v['kendall_tau']:.3f}",
            pct(sigma_rel(prof), 1))


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report(paths) -> str:
    """The two tables (measured profiles; profiles fitted to published numbers) for the profile files."""
    from lps_keras.latency.profile import load_profile

    measured, paper = [], []
    for path in paths:
        prof = load_profile(path)
        name = Path(path).name
        if prof.get("measured") and "validation" in prof:
            measured.append(measured_row(name, prof))
        elif "leave_one_out" in prof:
            paper.append(paper_row(name, prof))
        else:
            raise LPSError(f"{path}: a latency profile with neither validation nor leave-one-out figures")
    parts = []
    if measured:
        parts += ["Measured profiles: validation on held-out networks, beside the measurement's repeatability",
                  table(MEASURED_HEADER, measured)]
    if paper:
        parts += ["Fitted to published numbers, NOT measured: leave-one-out on those numbers",
                  table(PAPER_HEADER, paper)]
    return "\n\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", nargs="*", help="profile JSON files (default: every profiles/*.json)")
    args = p.parse_args(argv)
    paths = args.profiles or sorted(str(f) for f in (REPO / "profiles").glob("*.json"))
    try:
        if not paths:
            raise LPSError(f"no profiles given and none in {REPO / 'profiles'}")
        print(report(paths))
    except LPSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
