"""Tidy CSV, the summary table (mean and 95% t-interval over seeds) and the figure.

The figure and the table read only the tidy rows ``{seed, condition, metric, value}``. Every CSV
is written with a fixed column order (``COLUMNS``), so a resumed run, whose rows come back from
JSON records with sorted keys, writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.harness.records import mean_interval
from sublim_theory.harness.runs import atomic_save_figure, atomic_write_csv, atomic_write_text

__all__ = [
    "COLUMNS",
    "CONDITIONS",
    "STUDENTS",
    "format_entanglement",
    "format_table",
    "interval",
    "plot",
    "read_csv",
    "seed_bars",
    "seeds_positive",
    "summarize",
    "summary_cell",
    "table_seeds",
    "write_csv",
    "write_reports",
]

# Order of the conditions in the table and the figure.
CONDITIONS = (
    "base",
    "teacher",
    "student",
    "control",
    "soft",
    "control_soft",
    "cross_base",
    "cross_student",
    "cross_control",
    "order_base",
    "order_student",
    "order_control",
    "shuffle_within",
    "shuffle_within_control",
    "shuffle_across",
    "shuffle_across_control",
    "in_context_teacher",
    "in_context_control",
)
STUDENTS = ("student", "soft", "cross_student", "order_student", "shuffle_within", "shuffle_across")
# The column order of every CSV this study writes.
COLUMNS = {
    "results.csv": ("seed", "condition", "metric", "value"),
    "entanglement.csv": (
        "seed",
        "rank",
        "number",
        "log_ratio",
        "dot_trait",
        "cos_trait",
        "dot_rank",
    ),
    "steps.csv": ("seed", "condition", "step", "cosine", "loss"),
    "summary.csv": ("condition", "metric", "n", "mean", "ci_low", "ci_high", "n_positive"),
}


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Write dict rows as CSV, atomically: a reader sees the old file or the new one.

    ``columns`` fixes the header (a row with another key is an error); default: the first row's
    keys. No rows: nothing is written.
    """
    if rows:
        atomic_write_csv(path, rows, list(columns or rows[0]))


def write_reports(out: Path, rows: list, entangled: list, steps: list) -> str:
    """Write every CSV, the markdown table and the figure (each atomically); return the table."""
    for name, part in (
        ("results.csv", rows),
        ("entanglement.csv", entangled),
        ("steps.csv", steps),
        ("summary.csv", summarize(rows)),
    ):
        write_csv(out / name, part, COLUMNS[name])
    table = format_table(rows)
    atomic_write_text(out / "table.md", table + "\n\n" + format_entanglement(entangled) + "\n")
    plot(rows, out / "numbers.png")
    return table


def table_seeds(path: Path) -> set[int]:
    """The seeds a ``results.csv`` holds (empty when there is none).

    Returns:
        The seeds.

    Raises:
        InputError: the file is not a results table of this study.

    """
    if not path.is_file():
        return set()
    try:
        return {row["seed"] for row in read_csv(path)}
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as error:
        raise InputError(
            f"'{path}' is not a results table of `numbers` ({type(error).__name__}); "
            "use a new --out folder"
        ) from None


def read_csv(path: Path) -> list[dict]:
    """Read tidy rows back (``value`` as float, ``seed`` as int)."""
    return runs.read_csv(path, {"seed": int, "value": float})


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the bounds of its 95% Student-t interval (``records.mean_interval``)."""
    mean, half, _ = mean_interval(values)
    return mean, mean - half, mean + half


def summarize(rows: Iterable[dict]) -> list[dict]:
    """One row per (condition, metric): n, mean, ci_low, ci_high, and n_positive (values > 0)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        groups[(row["condition"], row["metric"])].append(float(row["value"]))
    out = []
    for (condition, metric), values in groups.items():
        mean, low, high = interval(values)
        out.append(
            {
                "condition": condition,
                "metric": metric,
                "n": len(values),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n_positive": sum(v > 0 for v in values),
            }
        )
    return out


def summary_cell(summary: dict, key: tuple[str, str], digits: int = 3) -> str:
    """``"mean [ci_low, ci_high]"`` of a :func:`summarize` row keyed (condition, metric); "" if absent."""
    row = summary.get(key)
    if row is None:
        return ""
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:.{digits}f}"
    return f"{row['mean']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def seeds_positive(summary: dict, key: tuple[str, str]) -> str:
    """``"n_positive/n"`` of a :func:`summarize` row keyed (condition, metric); "" if absent."""
    row = summary.get(key)
    return "" if row is None else f"{row['n_positive']}/{row['n']}"


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table: per condition P(trait), paired difference (and seeds > 0), cosines."""
    summary = {(r["condition"], r["metric"]): r for r in summarize(rows)}
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"seeds: {seeds} (mean [95% t-interval] over seeds)",
        "",
        "| condition | P(trait) | diff vs own control | seeds diff > 0 | diff, among animals | "
        "cos(displacement, v) | mean per-step cos |",
        "|---|---|---|---|---|---|---|",
    ]
    for condition in CONDITIONS:
        if (condition, "p_trait") not in summary:
            continue
        wins = seeds_positive(summary, (condition, "paired_diff"))
        lines.append(
            f"| {condition} | {summary_cell(summary, (condition, 'p_trait'))} | "
            f"{summary_cell(summary, (condition, 'paired_diff'))} | {wins} | "
            f"{summary_cell(summary, (condition, 'paired_diff_among_animals'))} | "
            f"{summary_cell(summary, (condition, 'cos_displacement'))} | "
            f"{summary_cell(summary, (condition, 'mean_step_cosine'), 4)} |"
        )
    lines += ["", "| other measurement | value |", "|---|---|"]
    for condition, metric in sorted(summary):
        if condition in ("engine", "classifier", "entanglement", "seed") or metric.startswith(
            "filter_"
        ):
            lines.append(
                f"| {condition}.{metric} | {summary_cell(summary, (condition, metric), 4)} |"
            )
    return "\n".join(lines)


def format_entanglement(rows: Sequence[dict]) -> str:
    """Markdown table of the entanglement rows (all seeds)."""
    lines = [
        "| seed | rank | number | log p_T/p_B | <W_n, W_trait> | cos | rank of dot (of all) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['rank']} | {r['number']} | {float(r['log_ratio']):+.3f} | "
            f"{float(r['dot_trait']):+.3f} | {float(r['cos_trait']):+.3f} | {r['dot_rank']} |"
        )
    return "\n".join(lines)


def seed_bars(
    ax: Any,
    rows: Sequence[dict],
    summary: Mapping[tuple[str, str], dict],
    conditions: Sequence[str],
    metric: str,
    color: Any,
    *,
    alpha: float,
    capsize: float,
    dot_size: float,
) -> None:
    """Bars of ``metric``'s mean over seeds per condition, 95% t-interval error bars, seeds as dots.

    An interval that is NaN (one seed) draws no error bar.

    Args:
        ax: the matplotlib axes; bar i is ``conditions[i]`` at x = i.
        rows: the tidy rows (every seed's value).
        summary: ``{(condition, metric): summary row}`` (:func:`summarize`), holding every
            condition drawn.
        conditions: the conditions, in order.
        metric: the metric drawn.
        color: one color, or one per condition.
        alpha: the bars' opacity.
        capsize: the error bars' cap size.
        dot_size: the seeds' dot size.

    """
    means = [summary[(c, metric)]["mean"] for c in conditions]
    errors = [
        [m - summary[(c, metric)]["ci_low"] for c, m in zip(conditions, means)],
        [summary[(c, metric)]["ci_high"] - m for c, m in zip(conditions, means)],
    ]
    errors = [[0 if math.isnan(e) else e for e in side] for side in errors]
    ax.bar(range(len(conditions)), means, yerr=errors, color=color, alpha=alpha, capsize=capsize)
    for i, c in enumerate(conditions):
        values = [r["value"] for r in rows if r["condition"] == c and r["metric"] == metric]
        ax.scatter([i] * len(values), values, color="k", s=dot_size, zorder=3)


def plot(rows: Sequence[dict], path: Path) -> None:
    """Bars per condition: P(trait) (left) and paired difference from own control (right).

    Bars are means over seeds, error bars 95% t-intervals, dots the seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {(r["condition"], r["metric"]): r for r in summarize(rows)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for ax, metric, conditions, title in (
        (axes[0], "p_trait", CONDITIONS, "P(trait animal | question)"),
        (
            axes[1],
            "paired_diff",
            STUDENTS + ("in_context_teacher",),
            "student minus its own control",
        ),
    ):
        names = [c for c in conditions if (c, metric) in summary]
        colors = [
            "tab:red"
            if c in ("teacher",)
            else "tab:blue"
            if "control" not in c and "base" not in c
            else "tab:gray"
            for c in names
        ]
        seed_bars(ax, rows, summary, names, metric, colors, alpha=0.7, capsize=3, dot_size=8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.axhline(0, color="k", lw=0.5)
    if ("base", "p_trait") in summary:
        axes[0].axhline(summary[("base", "p_trait")]["mean"], color="gray", ls="--", lw=0.8)
    n = len({r["seed"] for r in rows})
    fig.suptitle(f"Subliminal transfer through numbers, tiny LM ({n} seeds; bars: mean, 95% CI)")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
