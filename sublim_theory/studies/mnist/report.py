"""The paper's table from per-model accuracies: mean with a 95% t-interval, a tidy table, a plot.

The interval is mean +- t_{0.975, n-1} * sd / sqrt(n) over the N independent model families
(sd with the n - 1 denominator); with one model it is undefined (``null`` in JSON).
The tidy table (one row per (aux_logits, student_noise, row)) is written to ``table.csv``; the
plot reads only that table. A study of several cells (``cells`` in a config: one override table
per cell, e.g. one optimizer or one grid level each) writes one row per model and cell to
``models.csv`` (:func:`model_rows`), its summary to ``table.md`` (:func:`study_markdown`) and a
figure read from ``models.csv`` (:func:`plot_study`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sublim_theory.harness.records import mean_interval
from sublim_theory.harness.runs import atomic_save_figure, atomic_write_csv, read_csv
from sublim_theory.studies.mnist.experiment import ExperimentResult

__all__ = [
    "MODEL_COLUMNS",
    "ROWS",
    "TABLE_COLUMNS",
    "model_rows",
    "plot_study",
    "read_models",
    "study_markdown",
    "write_models",
    "format_cosines",
    "format_run",
    "plot_table",
    "read_table",
    "result_rows",
    "summarize",
    "tidy_table",
    "write_table",
]

ROWS = (
    "reference",
    "teacher",
    "student_aux",
    "student_all",
    "cross_aux",
    "cross_all",
    "randbody_aux",
    "randaux_aux",
    "randclass_aux",
)
MODEL_COLUMNS = (
    "cell",
    "factor",
    "level",
    "aux_logits",
    "row",
    "model",
    "accuracy",
    "cosine",
    "distillation_loss",
)
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
    atomic_write_csv(path, table, TABLE_COLUMNS)


def read_table(path: str | Path) -> list[dict[str, object]]:
    """The tidy table of ``table.csv``, numbers as floats."""
    return read_csv(path, {key: float for key in TABLE_COLUMNS if key != "row"})


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
            color=[
                *("0.6", "0.3", "tab:blue", "tab:cyan", "tab:red", "tab:orange"),
                *("tab:green", "tab:purple", "tab:brown"),
            ][: len(rows)],
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


def model_rows(
    cell: str, factor: str, level: str, result: ExperimentResult
) -> list[dict[str, object]]:
    """One row per model and table row (reference, teacher, each student group) of one cell.

    ``cosine`` and ``distillation_loss`` are the students' last-epoch values (NaN for the
    reference and the teacher, which are not distilled).

    Returns:
        The rows.

    """
    m = result.config["aux_logits"]
    base = {"cell": cell, "factor": factor, "level": level, "aux_logits": m}
    rows = []
    for name, values in (("reference", result.reference), ("teacher", result.teacher)):
        for i, value in enumerate(values):
            rows.append({**base, "row": name, "model": i, "accuracy": value})
            rows[-1].update(cosine=math.nan, distillation_loss=math.nan)
    for name, group in result.groups.items():
        losses = group.get("distillation_loss_per_epoch") or [[math.nan] * len(group["accuracy"])]
        for i, value in enumerate(group["accuracy"]):
            rows.append({**base, "row": _row_name(name), "model": i, "accuracy": value})
            rows[-1].update(
                cosine=group["cosine_per_epoch"][-1][i], distillation_loss=losses[-1][i]
            )
    return rows


def write_models(rows: Sequence[dict[str, object]], path: str | Path) -> None:
    """Write the per-model rows (``MODEL_COLUMNS``) as CSV, atomically."""
    atomic_write_csv(path, rows, MODEL_COLUMNS)


def read_models(path: str | Path) -> list[dict[str, object]]:
    """The per-model rows of ``models.csv``, numbers as floats."""
    numbers = ("aux_logits", "model", "accuracy", "cosine", "distillation_loss")
    return read_csv(path, dict.fromkeys(numbers, float))


def _cells(rows: Sequence[dict[str, object]]) -> dict[tuple[str, str], list[dict[str, object]]]:
    """Rows grouped by (cell, row), in order of first appearance."""
    grouped: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in rows:
        grouped.setdefault((row["cell"], row["row"]), []).append(row)
    return grouped


def study_markdown(rows: Sequence[dict[str, object]]) -> str:
    """Markdown table per (cell, row): accuracy mean, 95% t-interval, n, mean cosine and loss."""
    lines = [
        "| cell | row | accuracy | 95% CI | n | cos(update, teacher) | final distillation loss |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (cell, name), members in _cells(rows).items():
        mean, half, n = mean_interval([r["accuracy"] for r in members])
        interval = f"[{mean - half:.3f}, {mean + half:.3f}]" if n >= 2 else "-"
        cosine = np.mean([r["cosine"] for r in members])
        loss = np.mean([r["distillation_loss"] for r in members])
        extra = "| - | - |" if math.isnan(cosine) else f"| {cosine:+.4f} | {loss:.4g} |"
        lines.append(f"| {cell} | {name} | {mean:.3f} | {interval} | {n} {extra}")
    return "\n".join(lines) + "\n"


def plot_study(rows: Sequence[dict[str, object]], path: str | Path, title: str) -> None:
    """One panel per factor: accuracy (mean, 95% CI) of every row at each level of the factor.

    The ``baseline`` cell (no override) is drawn in every factor's panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _cells(rows)
    factors = list(dict.fromkeys(r["factor"] for r in rows if r["factor"] != "baseline"))
    factors = factors or ["baseline"]
    names = [n for n in ROWS if n != "reference" and any(k[1] == n for k in grouped)]
    figure, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors) + 1, 3.8))
    axes = np.atleast_1d(axes)
    for axis, factor in zip(axes, factors):
        cells = list(dict.fromkeys(r["cell"] for r in rows if r["factor"] in (factor, "baseline")))
        levels = [next(r["level"] for r in rows if r["cell"] == c) for c in cells]
        for offset, name in enumerate(names):
            points = [(x, grouped[(c, name)]) for x, c in enumerate(cells) if (c, name) in grouped]
            stats = [mean_interval([r["accuracy"] for r in m]) for _, m in points]
            axis.errorbar(
                [x + 0.08 * (offset - len(names) / 2) for x, _ in points],
                [mean for mean, _, _ in stats],
                yerr=[half if n >= 2 else 0 for _, half, n in stats],
                marker="o",
                linestyle="",
                capsize=3,
                label=name,
            )
        axis.set_xticks(range(len(cells)), levels, rotation=30, fontsize=8)
        axis.set_xlabel(factor, fontsize=9)
        axis.axhline(0.1, color="k", linestyle=":", linewidth=1)
        axis.set_ylim(0, 1)
    axes[0].set_ylabel("test accuracy (mean, 95% CI)")
    axes[-1].legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_save_figure(figure, path, dpi=120)
    plt.close(figure)
