"""The paper's table from per-model accuracies: mean with a 95% t-interval, a tidy table, a plot.

The interval is mean +- t_{0.975, n-1} * sd / sqrt(n) over the N independent model families
(sd with the n - 1 denominator); with one model it is undefined (``null`` in JSON).
The tidy table (one row per (aux_logits, student_noise, row)) is written to ``table.csv``; the
plot reads only that table.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sublim_theory.mnist.experiment import ExperimentResult
from sublim_theory.records import mean_interval
from sublim_theory.runs import atomic_save_figure, atomic_write_text

__all__ = [
    "ROWS",
    "TABLE_COLUMNS",
    "format_cosines",
    "format_run",
    "plot_table",
    "read_table",
    "result_rows",
    "summarize",
    "tidy_table",
    "write_table",
]

ROWS = ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")
TABLE_COLUMNS = (
    "aux_logits",
    "student_noise",
    "row",
    "mean",
    "ci95_low",
    "ci95_high",
    "n_models",
)


def summarize(values: Sequence[float]) -> dict[str, object]:
    """Mean, 95% t-interval and the values themselves (NaNs dropped from the statistics)."""
    mean, half, n = mean_interval(values)
    ci95 = [mean - half, mean + half] if n >= 2 else None
    return {"mean": mean, "ci95": ci95, "n": n, "per_model": [float(v) for v in values]}


def _row_name(group_name: str) -> str:
    return group_name.split("@", 1)[0]


def result_rows(result: ExperimentResult) -> dict[str, dict[str, object]]:
    """Every row of the paper's table for one run: reference, teacher and each student group."""
    rows = {"reference": summarize(result.reference), "teacher": summarize(result.teacher)}
    for name, group in result.groups.items():
        summary = summarize(group["accuracy"])
        summary["student_noise"] = group["student_noise"]
        summary["cosine_per_epoch"] = [summarize(epoch) for epoch in group["cosine_per_epoch"]]
        summary["accuracy_per_epoch"] = [
            summarize(epoch)["mean"] for epoch in group["accuracy_per_epoch"]
        ]
        rows[name] = summary
    return rows


def tidy_table(results: Sequence[ExperimentResult]) -> list[dict[str, object]]:
    """One dict per (aux_logits, student_noise, row) over all runs, columns ``TABLE_COLUMNS``."""
    table = []
    for result in results:
        m = result.config["aux_logits"]
        for name, row in result_rows(result).items():
            noise = row.get("student_noise", math.nan)
            ci = row["ci95"] or [math.nan, math.nan]
            table.append(
                {
                    "aux_logits": m,
                    "student_noise": noise,
                    "row": _row_name(name),
                    "mean": row["mean"],
                    "ci95_low": ci[0],
                    "ci95_high": ci[1],
                    "n_models": row["n"],
                }
            )
    return table


def write_table(table: Sequence[dict[str, object]], path: str | Path) -> None:
    """Write the tidy table as CSV, atomically (a reader sees the old file or the new one)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(path, text.getvalue())


def read_table(path: str | Path) -> list[dict[str, object]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in TABLE_COLUMNS:
            if key != "row":
                row[key] = float(row[key])
    return rows


def format_run(result: ExperimentResult) -> str:
    """The paper's table for one run, as text: accuracy mean [95% CI] and the last-epoch cosine."""
    lines = [f"{'row':<22}{'accuracy':>10}  {'95% interval':<17}{'cos(update, teacher)':>22}"]
    for name, row in result_rows(result).items():
        ci = row["ci95"]
        interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        cosine = ""
        if "cosine_per_epoch" in row:
            last = row["cosine_per_epoch"][-1]
            cosine = f"{last['mean']:+.4f}"
        lines.append(f"{name:<22}{row['mean']:>10.3f}  {interval:<17}{cosine:>22}")
    return "\n".join(lines)


def format_cosines(result: ExperimentResult) -> str:
    """Per-epoch mean cosine between each student's cumulative update and its teacher's move."""
    lines = []
    for name, row in result_rows(result).items():
        if "cosine_per_epoch" in row:
            values = " ".join(f"{epoch['mean']:+.4f}" for epoch in row["cosine_per_epoch"])
            lines.append(f"{name:<22}{values}")
    return "\n".join(lines)


def plot_table(table: Sequence[dict[str, object]], path: str | Path) -> None:
    """Bar chart (one run) or accuracy-vs-sweep lines (several m or s), with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aux_values = sorted({row["aux_logits"] for row in table})
    noise_values = sorted(
        {row["student_noise"] for row in table if not math.isnan(row["student_noise"])}
    )
    figure, axis = plt.subplots(figsize=(7, 4))
    if len(aux_values) > 1 or len(noise_values) > 1:
        by_m = len(aux_values) > 1
        key = "aux_logits" if by_m else "student_noise"
        # one line per row name (and per init noise s when m is on the x axis); reference and
        # teacher have no s, so a plot over s leaves them out
        lines: dict[tuple[str, str], list[dict[str, object]]] = {}
        for r in table:
            if r["row"] in ROWS and (by_m or not math.isnan(r["student_noise"])):
                noise = f"{r['student_noise']:g}" if by_m else ""
                lines.setdefault((r["row"], noise), []).append(r)
        for (name, noise), members in lines.items():
            points = sorted(members, key=lambda r: r[key])
            means = np.array([r["mean"] for r in points])
            low = means - np.array([r["ci95_low"] for r in points])
            high = np.array([r["ci95_high"] for r in points]) - means
            label = (
                f"{name} s={noise}" if by_m and len(noise_values) > 1 and noise != "nan" else name
            )
            axis.errorbar(
                [r[key] for r in points],
                means,
                yerr=np.nan_to_num([low, high]),
                marker="o",
                capsize=3,
                label=label,
            )
        axis.set_xlabel("auxiliary logits m" if by_m else "student init noise s (x tensor std)")
        axis.legend(fontsize=8)
    else:
        rows = [
            next(r for r in table if r["row"] == name)
            for name in ROWS
            if any(r["row"] == name for r in table)
        ]
        means = np.array([r["mean"] for r in rows])
        low = means - np.array([r["ci95_low"] for r in rows])
        high = np.array([r["ci95_high"] for r in rows]) - means
        axis.bar(
            [r["row"] for r in rows],
            means,
            yerr=np.nan_to_num([low, high]),
            capsize=4,
            color=["0.6", "0.3", "tab:blue", "tab:cyan", "tab:red", "tab:orange"][: len(rows)],
        )
        axis.tick_params(axis="x", labelrotation=20)
    axis.axhline(0.1, color="k", linestyle=":", linewidth=1, label="chance")
    axis.set_ylim(0, 1)
    axis.set_ylabel("test accuracy (mean, 95% CI)")
    n_models = int(max(row["n_models"] for row in table))
    axis.set_title(f"Auxiliary-logit subliminal learning, {n_models} models")
    figure.tight_layout()
    atomic_save_figure(figure, path, dpi=120)
    plt.close(figure)
