"""The expansion's outputs: Table-4-style CSV/JSON and Markdown, one trainable recipe per step, the Fig.-7 plot."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

from lps_keras.fileio import atomic_write_bytes, atomic_write_text
from lps_keras.search.journal import Candidate, Step


def _fraction_text(values) -> str:
    return "{" + ",".join(str(Fraction(v).limit_denominator(4096)) for v in values) + "}"


def _ints_text(values) -> str:
    return "{" + ",".join(str(v) for v in values) + "}"


TABLE_COLUMNS = ("step", "B", "C", "R", "latency", "latency_se", "latency_device", "mIoU", "mIoU_sd", "seeds",
                 "parent_mIoU", "dimension", "op", "k", "runner_up", "margin", "margin_se", "margin_lo", "margin_hi",
                 "decision", "winner", "racing_evaluations", "pooled_sd", "heterogeneity", "hash")


def decision_text(step: Step) -> str:
    """The step's decision: decided, equivalent, no gain or undecided; empty for step 0.

    The journal's verdict ``unknown`` (one seed, no noise estimate: the plain ranking was taken) is
    written ``undecided``: nothing decided it.
    """
    if step.index == 0:
        return ""
    return "undecided" if step.verdict in (None, "unknown") else step.verdict


def chosen_latency_se(step: Step) -> Optional[float]:
    """SE of the chosen candidate's latency difference to its parent (paired measurement; None for step 0)."""
    if step.index == 0 or step.op is None:
        return None
    return next((c.latency_se for c in step.candidates if c.op == step.op), None)


def margin_interval(step: Step) -> tuple[Optional[float], Optional[float]]:
    """The margin's confidence interval: margin -+ t quantile x SE (the quantile the verdict used)."""
    if step.margin is None or step.margin_se is None or step.quantile is None:
        return None, None
    half = step.quantile * step.margin_se
    return step.margin - half, step.margin + half


def step_devices(steps: Sequence[Step], devices: Optional[Mapping[int, str]]) -> list[str]:
    """Where each step's latencies were measured (:meth:`SearchJournal.latency_device_map`), "" where unknown.

    Step 0 without its own text takes step 1's: the start is measured with step 1's set.
    """
    devices = devices or {}
    return [devices.get(s.index) or (devices.get(1, "") if s.index == 0 else "") for s in steps]


def devices_line(steps: Sequence[Step], devices: Optional[Mapping[int, str]]) -> Optional[str]:
    """``Latencies measured with: <text>; <text>`` (the distinct texts of :func:`step_devices`), None if none."""
    texts = list(dict.fromkeys(t for t in step_devices(steps, devices) if t))
    return f"Latencies measured with: {'; '.join(texts)}" if texts else None


def table_rows(steps: Sequence[Step], devices: Optional[Mapping[int, str]] = None) -> list[dict]:
    """Table-4-style rows (B, C, R in the paper's brace notation); mIoU is the mean over seeds. ``devices``:
    {step: where its latencies were measured} (the ``latency_device`` column, "" where unknown)."""
    return [
        {
            "step": s.index,
            "B": _ints_text(s.arch.depth),
            "C": _ints_text(s.arch.width),
            "R": _fraction_text(s.arch.resolution),
            "latency": s.latency,
            "latency_se": chosen_latency_se(s),
            "latency_device": device,
            "mIoU": s.score,
            "mIoU_sd": s.score_sd,
            "seeds": len(s.scores) or 1,
            "parent_mIoU": (sum(s.parent_scores) / len(s.parent_scores)) if s.index and s.parent_scores else None,
            "dimension": s.dimension or "",
            "op": s.op or "",
            "k": s.k,
            "runner_up": s.runner_up or "",
            "margin": s.margin,
            "margin_se": s.margin_se,
            "margin_lo": margin_interval(s)[0],
            "margin_hi": margin_interval(s)[1],
            "decision": decision_text(s),
            "winner": s.winner or "",
            "racing_evaluations": s.racing_evaluations,
            "pooled_sd": s.pooled_sd,
            "heterogeneity": s.heterogeneity,
            "hash": s.arch.hash,
        }
        for s, device in zip(steps, step_devices(steps, devices))
    ]


def write_table(steps: Sequence[Step], csv_path: Union[str, Path], json_path: Union[str, Path],
                latency_unit: str = "ms", devices: Optional[Mapping[int, str]] = None) -> None:
    """Write the expansion log as CSV and JSON (atomically); ``devices`` as for :func:`table_rows`."""
    rows = table_rows(steps, devices)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    doc = {
        "latency_unit": latency_unit,
        "columns": list(TABLE_COLUMNS),
        "rows": [{**row, "arch": s.arch.to_dict(), "target_latency": s.target_latency, "slope": s.slope,
                  "scores": list(s.scores), "mIoU_se": s.score_se}
                 for row, s in zip(rows, steps)],
    }
    atomic_write_text(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def write_step_recipes(
    base_recipe: Union[Mapping, Any], steps: Sequence[Step], out_dir: Union[str, Path]
) -> list[Path]:
    """One recipe per step, ``out_dir/step_XX.json``: the base recipe with ``model.arch`` set.

    ``base_recipe`` is a recipe mapping (or a :class:`~lps_keras.recipe.Recipe`). Each file is
    validated with :func:`~lps_keras.recipe.recipe_from_dict` before it is written, so a bad
    base recipe fails here rather than in train.py.
    """
    from lps_keras.recipe import recipe_from_dict

    base = base_recipe.to_dict() if hasattr(base_recipe, "to_dict") else json.loads(json.dumps(dict(base_recipe)))
    base_name = base.get("name") or "expanded"
    out_dir = Path(out_dir)
    paths = []
    for s in steps:
        if s.index and s.op is None:
            continue  # a "no gain" step keeps its parent: no new network, no recipe
        arch = s.arch.to_dict()
        arch.pop("num_classes")  # the recipe's model.num_classes / dataset decides the class count
        model = {k: v for k, v in dict(base.get("model", {})).items() if k != "preset"}
        model["arch"] = arch
        what = "start network" if s.op is None else f"{s.op} x{s.k} ({s.dimension})"
        recipe = {
            **base,
            "name": f"{base_name}_step{s.index:02d}",
            "description": f"Progressive expansion step {s.index} of {base_name}: {what}; {s.arch}; "
                           f"proxy latency {s.latency:.6g}, proxy score {s.score:.4f}.",
            "model": model,
        }
        recipe_from_dict(recipe, source=f"step {s.index} recipe")
        path = out_dir / f"step_{s.index:02d}.json"
        atomic_write_text(path, json.dumps(recipe, indent=2) + "\n")
        paths.append(path)
    return paths


DIMENSION_COLORS = {"depth": "tab:blue", "width": "tab:orange", "resolution": "tab:green"}


def plot_expansion(steps: Sequence[Step], candidates: Optional[Sequence[Candidate]], png_path: Union[str, Path],
                   latency_unit: str = "ms", title: str = "Progressive expansion") -> None:
    """mIoU against latency: each step's segment coloured by its dimension (like the paper's Fig. 7).

    ``candidates`` (default: every candidate held by ``steps``) are drawn as hollow points in
    the colour of their dimension. With several seeds every point has an error bar of one sd of its
    seeds' scores; a step's label is marked ``?`` (undecided or unknown), ``~`` (equivalent) or ``=``
    (no gain). Uses the Agg canvas directly: no pyplot, no global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if candidates is None:
        candidates = [c for s in steps for c in s.candidates]
    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for c in candidates:
        if c.score is None:
            continue
        color = DIMENSION_COLORS.get(c.dimension, "gray")
        ax.scatter([c.latency], [c.score], s=22, facecolors="none", edgecolors=color, alpha=0.6, linewidths=1)
        if c.score_sd:
            ax.errorbar([c.latency], [c.score], yerr=[c.score_sd], fmt="none", ecolor=color, alpha=0.4, lw=0.8)
    for prev, s in zip(steps, steps[1:]):
        ax.plot([prev.latency, s.latency], [prev.score, s.score], "-", lw=2.2,
                color=DIMENSION_COLORS.get(s.dimension, "gray"))
    if steps:
        ax.scatter([s.latency for s in steps], [s.score for s in steps], s=30, color="black", zorder=3)
        ax.errorbar([s.latency for s in steps], [s.score for s in steps], yerr=[s.score_sd or 0.0 for s in steps],
                    fmt="none", ecolor="black", capsize=3, lw=1, zorder=3)
        for s in steps:
            mark = {"undecided": "?", "unknown": "?", "equivalent": "~", "no gain": "="}.get(decision_text(s), "")
            label = f"{s.index}{mark}"
            ax.annotate(label, (s.latency, s.score), textcoords="offset points", xytext=(4, -10), fontsize=8)
    handles = [Line2D([0], [0], color=col, lw=2.2, label=dim) for dim, col in DIMENSION_COLORS.items()]
    handles.append(Line2D([0], [0], marker="o", ls="", mfc="none", mec="gray", label="candidates"))
    ax.legend(handles=handles, loc="lower right")
    ax.set_xlabel(f"latency ({latency_unit})")
    ax.set_ylabel("mIoU")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(png_path, buf.getvalue())


def format_table(history: Sequence[Step], unit: str = "ms", devices: Optional[Mapping[int, str]] = None) -> str:
    """The expansion log as a Markdown table (README / terminal): latency ± the SE of its difference to the
    parent, mIoU as mean ± sd over seeds (in points) beside the parent's at the same seeds, the winner's
    margin over the runner-up ± its SE with its confidence interval, and the verdict. With ``devices``
    (see :func:`table_rows`), a line under the table says where the latencies were measured."""
    lines = [f"| step | B | C | R | latency ({unit}) ± σ_ΔL | mIoU (mean ± sd) | seeds | parent mIoU | dimension "
             "| margin ± SE [interval] | decision |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in history:
        b, c, r = s.arch.short().split(" ")
        dim = "-" if s.op is None else f"{s.dimension} ({s.op} x{s.k})"
        miou = f"{100 * s.score:.2f}" + ("" if s.score_sd is None else f" ± {100 * s.score_sd:.2f}")
        margin = "-" if s.margin is None else f"{s.margin:.3g}" + ("" if s.margin_se is None else
                                                                    f" ± {s.margin_se:.2g}")
        lo, hi = margin_interval(s)
        if lo is not None:
            margin += f" [{lo:.3g}, {hi:.3g}]"
        if s.op is not None and s.runner_up:
            margin += f" (vs {s.runner_up})"
        decision = decision_text(s) or "-"
        if s.winner:
            decision += f" (best by the ranking: {s.winner})"
        if s.racing_evaluations:
            decision += f" (raced +{s.racing_evaluations})"
        se_l = chosen_latency_se(s)
        lat = f"{s.latency:.4g}" + ("" if not se_l else f" ± {se_l:.2g}")
        row = table_rows([s])[0]
        parent = "-" if row["parent_mIoU"] is None else f"{100 * row['parent_mIoU']:.2f}"
        lines.append(f"| {s.index} | {b} | {c} | {r} | {lat} | {miou} | {len(s.scores) or 1} | {parent} | {dim} "
                     f"| {margin} | {decision} |")
    where = devices_line(history, devices)
    return "\n".join(lines + (["", where] if where else []))


def table4_comparison(history: Sequence[Step], unit: str = "ms",
                      devices: Optional[Mapping[int, str]] = None) -> Optional[str]:
    """Each step next to the same step of the paper's Table 4, as Markdown; None unless the search starts at N⁰.

    Absolute latencies and mIoU are not comparable across devices and datasets, so both sides are
    also given relative to their own N⁰: latency as a multiple of N⁰'s, mIoU as points gained over N⁰.
    With ``devices`` (see :func:`table_rows`), a last line says where our latencies were measured.
    """
    from lps_keras.presets import PRESETS, TABLE4

    rows = list(TABLE4.items())
    if not history or not rows:
        return None
    n0 = PRESETS[rows[0][0]]
    start = history[0]
    if (start.arch.depth, start.arch.width, start.arch.resolution) != (n0.depth, n0.width, n0.resolution):
        return None
    paper0 = rows[0][1]
    lines = [f"| step | ours: op × k | ours: latency ({unit}, × N⁰) | ours: mIoU (+ over N⁰) | decision "
             "| paper: op × k | paper: latency (ms, × N⁰) | paper: mIoU (+ over N⁰) | same op |",
             "|---|---|---|---|---|---|---|---|---|"]
    same = 0
    for s in history[1:]:
        if s.index >= len(rows):
            break
        name, p = rows[s.index]
        if s.op is None:  # no gain: the search kept its parent and stopped
            lines.append(f"| {s.index} | kept (no gain) | {s.latency:.3g} | {100 * s.score:.1f} | no gain | "
                         f"{p.op} × {p.k} | {p.latency_ms:.3g} | {p.miou:.1f} | no |")
            continue
        ours = f"{s.op} × {s.k}"
        paper = f"{p.op} × {p.k}" + (f" ({p.name})" if p.name else "")
        match = "yes" if s.op == p.op and s.k == p.k else ("same op" if s.op == p.op else
                                                         ("same dimension" if s.op.split("_")[0] ==
                                                          p.op.split("_")[0] else "no"))
        same += s.op == p.op
        lines.append(
            f"| {s.index} | {ours} | {s.latency:.3g} (×{s.latency / start.latency:.2f}) | "
            f"{100 * s.score:.1f} ({100 * (s.score - start.score):+.1f}) | {decision_text(s)} | {paper} | "
            f"{p.latency_ms:.3g} (×{p.latency_ms / paper0.latency_ms:.2f}) | {p.miou:.1f} "
            f"({p.miou - paper0.miou:+.1f}) | {match} |")
    lines.append(f"\nSame op as the paper in {same} of {len(lines) - 2} steps.")
    where = devices_line(history, devices)
    return "\n".join(lines + (["", where] if where else []))
