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


TABLE_COLUMNS = ("step", "B", "C", "R", "latency", "mIoU", "dimension", "op", "k", "hash")


def table_rows(steps: Sequence[Step]) -> list[dict]:
    """Table-4-style rows (B, C, R in the paper's brace notation)."""
    return [
        {
            "step": s.index,
            "B": _ints_text(s.arch.depth),
            "C": _ints_text(s.arch.width),
            "R": _fraction_text(s.arch.resolution),
            "latency": s.latency,
            "mIoU": s.score,
            "dimension": s.dimension or "",
            "op": s.op or "",
            "k": s.k,
            "hash": s.arch.hash,
        }
        for s in steps
    ]


def write_table(steps: Sequence[Step], csv_path: Union[str, Path], json_path: Union[str, Path],
                latency_unit: str = "ms") -> None:
    """Write the expansion log as CSV and JSON (atomically)."""
    rows = table_rows(steps)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    doc = {
        "latency_unit": latency_unit,
        "columns": list(TABLE_COLUMNS),
        "rows": [{**row, "arch": s.arch.to_dict(), "target_latency": s.target_latency, "slope": s.slope}
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
    the colour of their dimension. Uses the Agg canvas directly: no pyplot, no global backend.
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
        ax.scatter([c.latency], [c.score], s=22, facecolors="none",
                   edgecolors=DIMENSION_COLORS.get(c.dimension, "gray"), alpha=0.6, linewidths=1)
    for prev, s in zip(steps, steps[1:]):
        ax.plot([prev.latency, s.latency], [prev.score, s.score], "-", lw=2.2,
                color=DIMENSION_COLORS.get(s.dimension, "gray"))
    if steps:
        ax.scatter([s.latency for s in steps], [s.score for s in steps], s=30, color="black", zorder=3)
        for s in steps:
            ax.annotate(str(s.index), (s.latency, s.score), textcoords="offset points", xytext=(4, -10), fontsize=8)
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


def format_table(history: Sequence[Step], unit: str = "ms") -> str:
    """The expansion log as a Markdown table (README / terminal)."""
    lines = [f"| step | B | C | R | latency ({unit}) | mIoU | dimension |", "|---|---|---|---|---|---|---|"]
    for s in history:
        b, c, r = s.arch.short().split(" ")
        dim = "-" if s.op is None else f"{s.dimension} ({s.op} x{s.k})"
        lines.append(f"| {s.index} | {b} | {c} | {r} | {s.latency:.4g} | {100 * s.score:.2f} | {dim} |")
    return "\n".join(lines)
