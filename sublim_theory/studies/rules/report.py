"""The rules sweep's table (mean, 95% t-interval, n per cell) and figure, read from ``rules.csv``.

A cell is (teacher, parameterization, placement, student rule), pooled over architectures and
seeds. The figure draws, per teacher and placement, two heat maps over rules x parameterizations:
cos(s - s0, K v), the teacher-induced part of the step against K v, and the fraction of
(architecture, seed) pairs whose trait loss fell relative to the control step.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from sublim_theory.harness import runs
from sublim_theory.harness.records import interval_text, mean_interval
from sublim_theory.studies.rules.experiment import PLACEMENT_KINDS, RULES_TABLE, read_rules_table

__all__ = [
    "FIGURE_NAME",
    "SUMMARY_COLUMNS",
    "TABLE_NAME",
    "plot_rules",
    "summarize_rules",
    "write_rules_report",
    "write_rules_summary",
]

TABLE_NAME = "table.md"
FIGURE_NAME = "rules.png"
# (column of rules.csv, header in table.md)
SUMMARY_COLUMNS = (
    ("trait_falls_vs_control", "P(dL_T - control < 0)"),
    ("trait_falls", "P(dL_T < 0)"),
    ("cos_signal_K_v", "cos(s - s0, Kv)"),
    ("cos_signal_teacher", "cos(s - s0, v)"),
    ("cos_step_K_v", "cos(s, Kv)"),
    ("cos_step_prediction", "cos(s, s1)"),
    ("sign_agreement", "sign agreement"),
)
CELL = ("teacher", "parameterization", "placement", "student_rule")


def summarize_rules(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, 95% t half-width and n of each summary column, per cell, in first-seen order.

    Returns:
        One dict per cell: the cell's names, then ``(mean, half, n)`` per summary column.

    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[c] for c in CELL)].append(row)
    return [
        {
            **dict(zip(CELL, cell)),
            **{c: mean_interval(r[c] for r in members) for c, _ in SUMMARY_COLUMNS},
        }
        for cell, members in groups.items()
    ]


def _cell_text(mean: float, half: float, n: int) -> str:
    if n == 0:
        return "n/a"
    if math.isnan(half):
        return f"{mean:.3f} (n={n})"
    return interval_text(mean, half)


def _markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    archs = sorted({r["arch"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    counts = {s.get("trait_falls")[2] for s in summary}
    lines = [
        f"Pooled over architectures {archs} x seeds {seeds}: n = {sorted(counts)} per cell "
        "(mean [95% t-interval]). s: the exact step, s0: the control step (same rule and state, "
        "gradient toward the base's own outputs), s1: the first-order prediction. "
        "n/a: not defined (no prediction on an independent LoRA base).",
        "",
        "| teacher | param. | placement | rule | "
        + " | ".join(h for _, h in SUMMARY_COLUMNS)
        + " |",
        "|" + "---|" * (4 + len(SUMMARY_COLUMNS)),
    ]
    for cell in summary:
        values = " | ".join(_cell_text(*cell[c]) for c, _ in SUMMARY_COLUMNS)
        names = " | ".join(str(cell[c]) for c in CELL)
        lines.append(f"| {names} | {values} |")
    return "\n".join(lines) + "\n"


def plot_rules(summary: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Heat maps of cos(s - s0, K v) and P(dL_T - control < 0) per teacher x placement.

    Returns:
        The PNG's path.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    teachers = list(dict.fromkeys(s["teacher"] for s in summary))
    present = {s["placement"] for s in summary}
    placements = [p for p in PLACEMENT_KINDS if p in present]
    params = list(dict.fromkeys(s["parameterization"] for s in summary))
    rules = list(dict.fromkeys(s["student_rule"] for s in summary))
    metrics = [
        ("cos_signal_K_v", "cos(s - s0, Kv)", "RdBu", (-1, 1)),
        ("trait_falls_vs_control", "P(dL_T - control < 0)", "RdBu", (0, 1)),
    ]
    lookup = {tuple(s[c] for c in CELL): s for s in summary}
    nrows, ncols = len(teachers) * len(metrics), len(placements)
    figure, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols + 1, 2.4 * nrows + 0.5), squeeze=False
    )
    for t, teacher in enumerate(teachers):
        for m, (column, label, cmap, limits) in enumerate(metrics):
            for p, placement in enumerate(placements):
                axis = axes[t * len(metrics) + m][p]
                grid = np.full((len(rules), len(params)), np.nan)
                for i, rule in enumerate(rules):
                    for j, param in enumerate(params):
                        cell = lookup.get((teacher, param, placement, rule))
                        if cell is not None and cell[column][2] > 0:
                            grid[i, j] = cell[column][0]
                image = axis.imshow(grid, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
                for (i, j), value in np.ndenumerate(grid):
                    text = "n/a" if np.isnan(value) else f"{value:.2f}"
                    axis.text(j, i, text, ha="center", va="center", fontsize=7)
                axis.set_xticks(range(len(params)), params, fontsize=7, rotation=30)
                axis.set_yticks(range(len(rules)), rules, fontsize=7)
                axis.set_title(f"{label}\nteacher={teacher}, {placement}", fontsize=8)
                figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    out = Path(path)
    runs.atomic_save_figure(figure, out, dpi=110)
    plt.close(figure)
    return out


def write_rules_report(
    out_dir: str | os.PathLike[str], rows: list[dict[str, Any]], figure: bool = True
) -> tuple[Path, Path | None]:
    """Write ``table.md`` (and, with ``figure``, ``rules.png``) from parsed rows.

    Returns:
        The paths of the table and the figure (None without ``figure``).

    """
    folder = Path(out_dir)
    summary = summarize_rules(rows)
    table = folder / TABLE_NAME
    runs.atomic_write_text(table, _markdown(summary, rows))
    return table, plot_rules(summary, folder / FIGURE_NAME) if figure else None


def write_rules_summary(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``table.md`` and ``rules.png`` beside ``rules.csv``, from its rows in file order.

    Returns:
        The paths of the table and the figure.

    Raises:
        InputError: no (or a damaged) ``rules.csv`` in ``out_dir``.

    """
    folder = Path(out_dir)
    table, figure = write_rules_report(folder, read_rules_table(folder / RULES_TABLE))
    assert figure is not None
    return table, figure
