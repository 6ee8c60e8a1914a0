"""The defenses study's reports: tables, CSVs and the figure, read only from the tidy rows.

Every CSV is written with a fixed column order (``COLUMNS``), so a resumed run writes the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path

from sublim_theory.harness.runs import atomic_save_figure, atomic_write_text
from sublim_theory.studies.defenses.experiment import SAMPLINGS, Row, poison_name
from sublim_theory.studies.numbers import report as numbers_report
from sublim_theory.studies.numbers.report import (
    seed_bars,
    seeds_positive,
    summarize,
    summary_cell,
    write_csv,
)

__all__ = [
    "COLUMNS",
    "defense_changes",
    "format_tables",
    "plot",
    "segment_slopes",
    "write_reports",
]

COLUMNS = {
    "results.csv": ("seed", "condition", "metric", "value"),
    "summary.csv": numbers_report.COLUMNS["summary.csv"],
    "slopes.csv": ("seed", "condition", "metric", "value"),
}


def write_reports(out: Path, rows: list[Row]) -> str:
    """Write the CSVs, ``table.md`` and ``defenses.png`` (each atomically); return the tables."""
    write_csv(out / "results.csv", rows, COLUMNS["results.csv"])
    write_csv(out / "summary.csv", summarize(rows + defense_changes(rows)), COLUMNS["summary.csv"])
    write_csv(out / "slopes.csv", segment_slopes(rows), COLUMNS["slopes.csv"])
    table = format_tables(rows)
    atomic_write_text(out / "table.md", table + "\n")
    plot(rows, out / "defenses.png")
    return table


# --------------------------------------------------------------------------------------------
# tables and figure (they read only the tidy rows)
# --------------------------------------------------------------------------------------------
def segment_slopes(rows: list[Row]) -> list[Row]:
    """Per seed and consecutive pair of poisoned fractions: the slope of the paired difference.

    ``slope`` = (diff(f_hi) - diff(f_lo)) / (f_hi - f_lo); ``relative_slope`` divides it by the
    overall slope diff(f_max) / f_max, so a straight line gives 1 in every segment and a sharp
    transition gives one segment far above 1 and the others near 0.

    Returns:
        One row a seed and pair.

    """
    diff: dict[int, dict[float, float]] = {}
    fraction_of = {
        (r["seed"], r["condition"]): r["value"] for r in rows if r["metric"] == "fraction"
    }
    for r in rows:
        if r["metric"] == "paired_diff" and (r["seed"], r["condition"]) in fraction_of:
            diff.setdefault(r["seed"], {})[fraction_of[(r["seed"], r["condition"])]] = r["value"]
    out: list[Row] = []
    for seed, curve in sorted(diff.items()):
        fractions = sorted(curve)
        overall = curve[fractions[-1]] / fractions[-1] if fractions[-1] > 0 else math.nan
        for lo, hi in zip(fractions, fractions[1:]):
            slope = (curve[hi] - curve[lo]) / (hi - lo)
            out.append(
                {
                    "seed": seed,
                    "condition": f"{lo:g}-{hi:g}",
                    "metric": "slope",
                    "value": slope,
                }
            )
            out.append(
                {
                    "seed": seed,
                    "condition": f"{lo:g}-{hi:g}",
                    "metric": "relative_slope",
                    "value": slope / overall if overall else math.nan,
                }
            )
    return out


def defense_changes(rows: list[Row]) -> list[Row]:
    """Per seed: each defended student's paired diff minus the undefended (plain) one's.

    Conditions ``student_top_p``, ``student_min_prob`` and ``student_masked``; metric
    ``change_vs_plain`` (negative: the defense removed transfer) and ``remaining_share`` (the
    defended diff over the plain diff).

    Returns:
        One row a seed and defense.

    """
    diff = {(r["seed"], r["condition"]): r["value"] for r in rows if r["metric"] == "paired_diff"}
    out: list[Row] = []
    for seed in sorted({r["seed"] for r in rows}):
        plain = diff.get((seed, "student_plain"))
        for condition in ("student_top_p", "student_min_prob", "student_masked"):
            value = diff.get((seed, condition))
            if plain is None or value is None:
                continue
            for metric, x in (
                ("change_vs_plain", value - plain),
                ("remaining_share", value / plain if plain else math.nan),
            ):
                out.append({"seed": seed, "condition": condition, "metric": metric, "value": x})
    return out


def format_tables(rows: list[Row]) -> str:
    """The three defense tables (mean [95% t-interval] over seeds, n, seeds with diff > 0)."""
    summary = {(r["condition"], r["metric"]): r for r in summarize(rows + defense_changes(rows))}
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"seeds: {seeds} (n = {len(seeds)}; mean [95% t-interval] over seeds). Paired diff = "
        "student P(trait) minus its control's, same init, optimizer, steps and batch order.",
        "",
        "## Sampling defenses (teacher and base sample with the same setting)",
        "",
        "| sampling | teacher P(trait) | base P(trait) | student P(trait) | control P(trait) "
        "| paired diff | seeds diff > 0 | change vs plain | remaining share | teacher seqs kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SAMPLINGS:
        lines.append(
            f"| {s} | {summary_cell(summary, (f'teacher_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'base_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'control_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'paired_diff'))} "
            f"| {seeds_positive(summary, (f'student_{s}', 'paired_diff'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'change_vs_plain'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'remaining_share'), 2)} "
            f"| {summary_cell(summary, (f'teacher_{s}', 'filter_kept'), 0)} |"
        )
    lines += [
        "",
        "## Divergence-token masking (train only where argmax teacher = argmax base)",
        "",
        "| student | paired diff | seeds diff > 0 | change vs plain | remaining share "
        "| masked share, teacher numbers | masked share, base numbers |",
        "|---|---|---|---|---|---|---|",
        f"| unmasked (plain) | {summary_cell(summary, ('student_plain', 'paired_diff'))} "
        f"| {seeds_positive(summary, ('student_plain', 'paired_diff'))} | | | 0 | 0 |",
        f"| masked | {summary_cell(summary, ('student_masked', 'paired_diff'))} "
        f"| {seeds_positive(summary, ('student_masked', 'paired_diff'))} "
        f"| {summary_cell(summary, ('student_masked', 'change_vs_plain'))} "
        f"| {summary_cell(summary, ('student_masked', 'remaining_share'), 2)} "
        f"| {summary_cell(summary, ('student_masked', 'masked_share'), 4)} "
        f"| {summary_cell(summary, ('control_masked', 'masked_share'), 4)} |",
        "",
        "## Poisoned fraction (f teacher + (1 - f) base numbers; control: f = 0)",
        "",
        "| f | P(trait) | paired diff | seeds diff > 0 |",
        "|---|---|---|---|",
    ]
    fractions = sorted({r["value"] for r in rows if r["metric"] == "fraction"})
    for f in fractions:
        name = poison_name(f)
        diff = (name, "paired_diff")
        control = f == 0  # the control itself: its diff is 0 by definition
        lines.append(
            f"| {f:g} | {summary_cell(summary, (name, 'p_trait'))} "
            f"| {'0 (the control)' if control else summary_cell(summary, diff)} "
            f"| {'' if control else seeds_positive(summary, diff)} |"
        )
    slopes = {(r["condition"], r["metric"]): r for r in summarize(segment_slopes(rows))}
    segments = [f"{lo:g}-{hi:g}" for lo, hi in zip(fractions, fractions[1:])]
    lines += [
        "",
        "Increments: slope of the paired diff per unit f in each segment, and that slope over "
        "the overall slope diff(1)/1 (1 everywhere for a straight line).",
        "",
        "| segment | slope | relative slope |",
        "|---|---|---|",
    ]
    for segment in segments:
        lines.append(
            f"| {segment} | {summary_cell(slopes, (segment, 'slope'))} "
            f"| {summary_cell(slopes, (segment, 'relative_slope'), 2)} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Three panels: paired diff per sampling setting, masked vs unmasked, the poisoning curve.

    Bars / points are means over seeds, error bars 95% t-intervals, small dots the seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {(r["condition"], r["metric"]): r for r in summarize(rows)}

    def values(condition: str, metric: str = "paired_diff") -> list[float]:
        return [r["value"] for r in rows if r["condition"] == condition and r["metric"] == metric]

    def bars(ax, conditions: list[str], labels: list[str], color: str) -> None:
        present = [(c, lab) for c, lab in zip(conditions, labels) if (c, "paired_diff") in summary]
        names = [c for c, _ in present]
        seed_bars(ax, rows, summary, names, "paired_diff", color, alpha=0.6, capsize=4, dot_size=10)
        ax.set_xticks(range(len(present)), [lab for _, lab in present])
        ax.axhline(0, color="k", lw=0.6)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    bars(axes[0], [f"student_{s}" for s in SAMPLINGS], list(SAMPLINGS), "tab:blue")
    axes[0].set_title("sampling: student minus control")
    axes[0].set_ylabel("paired diff in P(trait)")
    share = summary.get(("student_masked", "masked_share"))
    masked_label = "masked" if share is None else f"masked ({100 * share['mean']:.1f}% targets)"
    bars(axes[1], ["student_plain", "student_masked"], ["unmasked", masked_label], "tab:green")
    axes[1].set_title("divergence-token masking")
    fractions = sorted({r["value"] for r in rows if r["metric"] == "fraction"})
    present = [f for f in fractions if (poison_name(f), "paired_diff") in summary]
    means = [summary[(poison_name(f), "paired_diff")]["mean"] for f in present]
    low = [summary[(poison_name(f), "paired_diff")]["ci_low"] for f in present]
    high = [summary[(poison_name(f), "paired_diff")]["ci_high"] for f in present]
    low = [m if math.isnan(x) else x for x, m in zip(low, means)]
    high = [m if math.isnan(x) else x for x, m in zip(high, means)]
    axes[2].fill_between(present, low, high, color="tab:red", alpha=0.2, label="95% CI")
    axes[2].plot(present, means, "o-", color="tab:red", label="mean")
    for f in present:
        axes[2].scatter([f] * len(values(poison_name(f))), values(poison_name(f)), color="k", s=8)
    if present and present[-1] > 0:
        axes[2].plot([0, present[-1]], [0, means[-1]], ls="--", color="gray", label="straight line")
    axes[2].axhline(0, color="k", lw=0.6)
    axes[2].set_xlabel("poisoned fraction f (teacher share of the data)")
    axes[2].set_title("poisoned fraction: diff vs all-base control")
    axes[2].legend(fontsize=8)
    n = len({r["seed"] for r in rows})
    fig.suptitle(f"Token-level defenses, tiny LM ({n} seeds; mean, 95% t-interval, seeds as dots)")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
