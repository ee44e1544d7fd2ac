"""The paper's design-principle studies, as pure functions of a latency function.

- :func:`blocks_study`: Table 2. B = {1,2,4,7,7}, R = {1, 1/4, 0}, C = {c,2c,4c,8c,8c}, no path
  interaction; ``c`` tuned per block type (:func:`tune_width`) to a common latency target (default:
  the conv3x3 network at c = 16), reporting c, latency, GFLOPs and GFLOPs/ms beside the paper's row.
- :func:`interactions_study`: Table 3. conv3x3, c = 16, each path interaction; latency and its
  increase over ``none`` (the paper's "baseline").
- :func:`widths_study`: Figs. 4/5. One 3x3 conv vs a separable 3x3 conv on a 32-channel 128x128
  input, latency and FLOPs against output width.
- :func:`add_accuracy`: val mIoU of every blocks / interactions row from one short training each
  (``python -m lps_keras.study ... --train RECIPE``: the recipe's ``search.proxy`` schedule).

Nothing here measures: ``latency_fn(arch) -> ms`` and ``latency_set_fn(targets) -> [ms]`` (one
interleaved, paired measurement of a set, :func:`lps_keras.latency.measure_set`) are arguments, so
the studies run on a stub in tests; ``python -m lps_keras.study`` supplies the real ones.
GFLOPs are counted as the paper counts them: multiply-accumulates of the convs / 1e9 (the conv3x3
network at c = 14 has 18.4 G at 1024x2048, the paper's row says 18.5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lps_keras.arch import Arch
from lps_keras.block_specs import BLOCK_TYPES, INTERACTION_TYPES

TABLE2_DEPTH = (1, 2, 4, 7, 7)
TABLE2_RESOLUTION = (1.0, 0.25, 0.0)
TABLE2_WIDTH_FACTORS = (1, 2, 4, 8, 8)
REFERENCE_C = 16

#: The paper's Table 2 (Cityscapes val; GTX 1070Ti, TensorRT FP32, 1024x2048): block -> (mIoU, ms, GFLOPs, GFLOPs/ms).
PAPER_TABLE2 = {
    "shufflenet_unit": (50.8, 5.11, 0.8, 0.15), "inverted_residual": (59.2, 5.12, 2.0, 0.39),
    "ghost": (58.3, 5.25, 2.5, 0.47), "residual": (66.1, 5.24, 16.1, 3.08), "bottleneck": (55.7, 5.65, 2.2, 0.39),
    "sepconv3x3": (53.9, 5.10, 1.1, 0.21), "conv3x3": (66.2, 5.08, 18.5, 3.63),
}
#: The paper's Table 3: interaction -> (mIoU, ms); its "baseline" is ``none``.
PAPER_TABLE3 = {
    "none": (66.9, 5.68), "direct_a": (67.9, 6.42), "direct_b": (68.1, 6.49), "attention_a": (68.2, 6.42),
    "attention_b": (68.6, 6.99), "bilateral_a": (69.6, 6.48), "bilateral_b": (69.9, 5.97),
}
WIDTH_KINDS = ("conv3x3", "sepconv3x3")


def _sig(x: float) -> float:
    # Four significant digits: GFLOPs at a tiny test size are far below 0.001.
    return float(f"{x:.4g}")


def _set_figures(measured) -> tuple[list[float], list | None, list | None]:
    """``(medians, paired deltas to the first target, their SEs)`` of what a ``latency_set_fn`` returned:
    a plain list of ms (deltas unknown) or a :class:`lps_keras.latency.SetMeasurement` with the
    first target as its parent."""
    if hasattr(measured, "median_ms"):
        return ([float(v) for v in measured.median_ms], [float(v) for v in measured.delta_ms],
                [float(v) for v in measured.delta_se_ms])
    return [float(v) for v in measured], None, None


def table2_arch(block: str, c: int, interaction: str = "none", num_classes: int = 19) -> Arch:
    return Arch(TABLE2_DEPTH, tuple(f * c for f in TABLE2_WIDTH_FACTORS), TABLE2_RESOLUTION,
                num_classes=num_classes, block=block, interaction=interaction)


def width_step(block: str) -> int:
    """Smallest step of c that keeps every width valid (the ShuffleNetV2 unit needs even widths)."""
    return 2 if block == "shufflenet_unit" else 1


def tune_width(latency_at: Callable[[int], float], target_ms: float, step: int = 1, c_max: int = 512,
               c_start: int = REFERENCE_C, known: dict[int, float] | None = None) -> dict:
    """The c (a multiple of ``step``) whose latency is closest to ``target_ms``: bracket, then bisect.

    Assumes latency grows with c (it does, up to measurement noise and plateaus). Starts at ``c_start``
    and doubles (or halves) until the target is bracketed, so a light block never times a network
    far wider than it needs (c = 512 is 4096 channels at stage 4, minutes per run at 1024x2048);
    then bisects for the smallest c at or above the target and keeps it or the one below, whichever
    is closer. ``known`` holds latencies already measured (the default target is conv3x3 at c = 16:
    timing it again would let noise put the target's own network on the wrong side of the target).
    Returns ``{"c", "latency_ms", "evaluations": {c: ms}}``.
    """
    seen: dict[int, float] = dict(known or {})

    def at(c):
        if c not in seen:
            seen[c] = float(latency_at(c))
        return seen[c]

    top = max(1, c_max // step)  # in units of step
    u = min(max(1, c_start // step), top)
    if at(u * step) >= target_ms:  # halve down to a c below the target (or to step)
        lo, hi = u, u
        while lo > 1 and at(lo * step) >= target_ms:
            hi, lo = lo, max(1, lo // 2)
        if at(lo * step) >= target_ms:
            hi = lo
        else:
            lo += 1
    else:  # double up to a c at or above the target (or to c_max)
        lo, hi = u + 1, u
        while hi < top and at(hi * step) < target_ms:
            lo, hi = hi + 1, min(top, hi * 2)
        if at(hi * step) < target_ms:
            lo = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid * step) >= target_ms:
            hi = mid
        else:
            lo = mid + 1
    at(lo * step)
    if lo > 1:
        at((lo - 1) * step)
    # The closest of every c timed, not only the bracket's two ends: under noise latency is not
    # monotone in c, and the target's own network (known) must win its own target.
    timed = [c for c in seen if c % step == 0 and step <= c <= top * step]
    best = min(timed, key=lambda c: (abs(seen[c] - target_ms), c))
    return {"c": best, "latency_ms": at(best), "evaluations": dict(sorted(seen.items()))}


def blocks_study(latency_fn: Callable[[Arch], float], input_size=(1024, 2048), target_ms: float | None = None,
                 latency_set_fn: Callable[[Sequence[Arch]], Sequence[float]] | None = None,
                 blocks: Sequence[str] = BLOCK_TYPES, c_max: int = 512) -> dict:
    """Table 2 (module docstring). With ``latency_set_fn`` the tuned networks are re-timed together."""
    h, w = input_size
    known: dict[str, dict[int, float]] = {}
    if target_ms is None:
        target_ms = float(latency_fn(table2_arch("conv3x3", REFERENCE_C)))
        known["conv3x3"] = {REFERENCE_C: target_ms}
    tuned = {b: tune_width(lambda c, b=b: latency_fn(table2_arch(b, c)), target_ms, width_step(b), c_max,
                           known=known.get(b)) for b in blocks}
    archs = [table2_arch(b, tuned[b]["c"]) for b in blocks]
    final = (_set_figures(latency_set_fn(archs))[0] if latency_set_fn is not None
             else [tuned[b]["latency_ms"] for b in blocks])
    rows = []
    for b, arch, ms in zip(blocks, archs, final):
        gflops = arch.macs(h, w) / 1e9
        paper = PAPER_TABLE2.get(b, (None,) * 4)
        rows.append({"block": b, "c": tuned[b]["c"], "latency_ms": round(float(ms), 4), "gflops": _sig(gflops),
                     "gflops_per_ms": _sig(gflops / ms) if ms > 0 else None,
                     "paper_miou": paper[0], "paper_latency_ms": paper[1], "paper_gflops": paper[2],
                     "paper_gflops_per_ms": paper[3], "tuning": tuned[b]["evaluations"]})
    return {"study": "blocks", "input_size": [h, w], "target_ms": round(target_ms, 4), "rows": rows,
            "columns": ["block", "c", "latency_ms", "gflops", "gflops_per_ms", "paper_miou", "paper_latency_ms",
                        "paper_gflops", "paper_gflops_per_ms"],
            "setting": "B={1,2,4,7,7}, R={1,1/4,0}, C={c,2c,4c,8c,8c}, interaction none; c tuned to target_ms"}


def interactions_study(latency_set_fn: Callable[[Sequence[Arch]], Sequence[float]], input_size=(1024, 2048),
                       c: int = REFERENCE_C, interactions: Sequence[str] = INTERACTION_TYPES) -> dict:
    """Table 3: every interaction timed in one interleaved set; increase over ``none``.

    ``none`` is timed first, as the set's parent: where the set function returns a paired
    measurement, the increase is the median of the per-round differences to ``none`` (machine drift
    cancels within a round) with its standard error (``increase_se_ms``); else the medians' difference.
    """
    interactions = ("none", *(i for i in interactions if i != "none"))
    archs = [table2_arch("conv3x3", c, interaction=i) for i in interactions]
    ms, delta, delta_se = _set_figures(latency_set_fn(archs))
    if delta is None:
        delta, delta_se = [t - ms[0] for t in ms], [None] * len(ms)
    rows = []
    for i, arch, t, d, se in zip(interactions, archs, ms, delta, delta_se):
        paper = PAPER_TABLE3.get(i, (None, None))
        rows.append({"interaction": i, "latency_ms": round(t, 4), "increase_ms": round(d, 4),
                     "increase_se_ms": None if se is None else round(se, 4),
                     "gflops": _sig(arch.macs(*input_size) / 1e9), "paper_miou": paper[0],
                     "paper_latency_ms": paper[1],
                     "paper_increase_ms": None if paper[1] is None else round(paper[1] - PAPER_TABLE3["none"][1], 2)})
    return {"study": "interactions", "input_size": list(input_size), "c": c, "rows": rows,
            "columns": ["interaction", "latency_ms", "increase_ms", "increase_se_ms", "gflops", "paper_miou",
                        "paper_latency_ms",
                        "paper_increase_ms"],
            "setting": f"conv3x3, c={c}, B={{1,2,4,7,7}}, R={{1,1/4,0}}"}


def width_macs(kind: str, width: int, in_channels: int, size) -> int:
    hw = size[0] * size[1]  # stride 1, "same" padding
    return hw * 9 * in_channels * width if kind == "conv3x3" else hw * (9 * in_channels + in_channels * width)


def widths_study(latency_set_fn: Callable[[Sequence[tuple[str, int]]], Sequence[float]],
                 widths: Sequence[int] = range(1, 65), in_channels: int = 32, size=(128, 128)) -> dict:
    """Figs. 4/5: per output width, a 3x3 conv and a separable 3x3 conv timed as a pair."""
    rows = []
    for c in widths:
        conv_ms, sep_ms = _set_figures(latency_set_fn([(k, c) for k in WIDTH_KINDS]))[0]
        conv, sep = (width_macs(k, c, in_channels, size) / 1e9 for k in WIDTH_KINDS)
        rows.append({"width": c, "conv3x3_ms": round(conv_ms, 5), "sepconv3x3_ms": round(sep_ms, 5),
                     "conv3x3_gflops": conv, "sepconv3x3_gflops": sep})
    return {"study": "widths", "input": [in_channels, *size], "rows": rows,
            "columns": ["width", "conv3x3_ms", "sepconv3x3_ms", "conv3x3_gflops", "sepconv3x3_gflops"],
            "setting": f"one layer on a {in_channels}x{size[0]}x{size[1]} input, output width 1..{max(widths)}"}


def row_arch(result: dict, row: dict) -> Arch:
    """The network a row of the blocks or interactions study describes."""
    if result["study"] == "blocks":
        return table2_arch(row["block"], row["c"])
    if result["study"] == "interactions":
        return table2_arch("conv3x3", result["c"], interaction=row["interaction"])
    raise ValueError(f"the {result['study']!r} study has no networks to train")


def add_accuracy(result: dict, accuracy_fn: Callable[[Arch, int], float], seeds: int = 2) -> dict:
    """Item 3 of the studies: every row's network trained by ``accuracy_fn(arch, seed) -> val mIoU``.

    The first row (conv3x3 / ``none``: the paper's choice and baseline) trains ``seeds`` seeds, the
    others one: its seed spread (``seed_noise``) says how large a difference between two rows is
    noise. Adds ``val_miou`` (the mean over the row's seeds) and ``val_miou_seeds`` to each row.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds!r}")
    for i, row in enumerate(result["rows"]):
        arch = row_arch(result, row)
        scores = [float(accuracy_fn(arch, seed)) for seed in range(seeds if i == 0 else 1)]
        row["val_miou_seeds"] = [round(v, 4) for v in scores]
        row["val_miou"] = round(sum(scores) / len(scores), 4)
    first = result["rows"][0]["val_miou_seeds"]
    mean = sum(first) / len(first)
    sd = (sum((v - mean) ** 2 for v in first) / (len(first) - 1)) ** 0.5 if len(first) > 1 else None
    label = result["rows"][0].get("block") or result["rows"][0].get("interaction")
    result["seed_noise"] = {"variant": label, "seeds": len(first), "val_miou": first,
                            "sd": None if sd is None else round(sd, 4)}
    if "val_miou" not in result["columns"]:
        result["columns"].insert(result["columns"].index("gflops") + 1, "val_miou")
    return result


def to_markdown(result: dict) -> str:
    cols = result["columns"]
    where = [f"{result['backend']} {result.get('precision', '')}, {result['cpu']}; {result['timing']}", ""] \
        if "cpu" in result else []
    lines = [f"# {result['study']}", "", result["setting"], "", *where,
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in result["rows"]:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row[c]) for c in cols) + " |")
    noise = result.get("seed_noise")
    if noise:
        lines += ["", f"val mIoU: one short training per row ({result.get('training', 'see the JSON')}); the first "
                  f"row trained {noise['seeds']} seeds: {noise['val_miou']}, sd {noise['sd']}."]
    return "\n".join(lines) + "\n"


def plot_widths(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    x = [r["width"] for r in rows]
    fig, (ax_ms, ax_fl) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in WIDTH_KINDS:
        ax_ms.plot(x, [r[f"{kind}_ms"] for r in rows], marker=".", label=kind)
        ax_fl.plot(x, [r[f"{kind}_gflops"] for r in rows], marker=".", label=kind)
    ax_ms.set(xlabel="channel width", ylabel="latency (ms)", title="latency")
    ax_fl.set(xlabel="channel width", ylabel="GFLOPs (MACs / 1e9)", title="FLOPs")
    for ax in (ax_ms, ax_fl):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(result: dict, out_dir) -> list:
    """``<study>.json`` and ``<study>.md`` (and ``widths.png``) under ``out_dir``; the paths written."""
    import json
    from pathlib import Path

    from lps_keras.fileio import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = result["study"]
    paths = [out / f"{name}.json", out / f"{name}.md"]
    atomic_write_text(paths[0], json.dumps(result, indent=2) + "\n")
    atomic_write_text(paths[1], to_markdown(result))
    if name == "widths":
        paths.append(out / "widths.png")
        plot_widths(result, paths[-1])
    return paths
