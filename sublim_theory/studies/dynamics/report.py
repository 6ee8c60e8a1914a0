"""The dynamics study's tables and figure: ``steps.csv``, ``accuracy.csv``, ``table.md``, the plot.

``steps.csv`` holds one row per group, model and step (the metrics of
:data:`~sublim_theory.studies.dynamics.experiment.STEP_METRICS`, 6 significant digits);
``accuracy.csv`` one row per group, model and epoch (``reference`` and ``teacher`` at epoch 0).
Both are written from the stored units (:func:`write_tables`), read back (:func:`read_rows`), and
the summary table (mean, 95% t-interval, n) and the figure are built from what was read.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from sublim_theory.harness.records import mean_interval
from sublim_theory.harness.runs import atomic_save_figure, atomic_write_text, read_csv
from sublim_theory.studies.dynamics.experiment import GROUPS, STEP_METRICS

__all__ = [
    "LABELS",
    "STEP_COLUMNS",
    "plot_dynamics",
    "read_rows",
    "summary_table",
    "write_reports",
    "write_tables",
]

THIRDS = ("early", "middle", "late")
LABELS = {
    "cos_trait_distill": "cos(grad L_trait, grad L_distill)",
    "cos_step_trait": "cos(step, -grad L_trait)",
    "distill_loss": "L_distill (aux KL)",
    "trait_loss": "L_trait (digit CE)",
}
STEP_COLUMNS = ("group", "model", "epoch", "step", *STEP_METRICS)
ACCURACY_COLUMNS = ("group", "model", "epoch", "accuracy")


def _number(value: object) -> str:
    """A stored value as the tables write it: 6 significant digits, JSON's null as nan."""
    return f"{math.nan if value is None else float(value):.6g}"


def write_tables(out: Path, rows: list[dict[str, object]]) -> None:
    """``steps.csv`` and ``accuracy.csv`` from the stored rows of the finished epochs.

    Rows are ordered as the tables always were: steps by group, model, step; accuracy with the
    reference and teacher of each model first, then by group, model, epoch.
    """
    order = {name: i for i, name in enumerate(GROUPS)}
    steps = sorted(
        (r for r in rows if r["table"] == "steps"),
        key=lambda r: (order[r["group"]], r["model"], r["step"]),
    )
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(STEP_COLUMNS)
    for r in steps:
        values = [_number(r[name]) for name in STEP_METRICS]
        writer.writerow([r["group"], r["model"], r["epoch"], r["step"], *values])
    atomic_write_text(out / "steps.csv", lines.getvalue())
    accuracy = [r for r in rows if r["table"] == "accuracy"]
    fixed = sorted(
        (r for r in accuracy if r["group"] in ("reference", "teacher")),
        key=lambda r: (r["model"], r["group"] != "reference"),
    )
    trained = sorted(
        (r for r in accuracy if r["group"] in order),
        key=lambda r: (order[r["group"]], r["model"], r["epoch"]),
    )
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(ACCURACY_COLUMNS)
    for r in [*fixed, *trained]:
        writer.writerow([r["group"], r["model"], r["epoch"], _number(r["accuracy"])])
    atomic_write_text(out / "accuracy.csv", lines.getvalue())


def read_rows(path: Path) -> list[dict[str, object]]:
    """A CSV this command wrote, numbers parsed (``group`` stays a string)."""
    return read_csv(path, {"group": str}, other=float)


def _per_model_steps(steps: list[dict[str, object]], metric: str) -> dict[str, np.ndarray]:
    """Per group, a ``(models, steps)`` array of one metric (NaN-free rows as written)."""
    by_group: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in steps:
        by_group[row["group"]][int(row["model"])].append((int(row["step"]), float(row[metric])))
    arrays = {}
    for group, models in by_group.items():
        arrays[group] = np.array([[v for _, v in sorted(models[i])] for i in sorted(models)])
    return arrays


def _cell(values: list[float] | np.ndarray, spec: str = ".3f") -> str:
    mean, half, n = mean_interval([float(v) for v in values])
    if n == 0:
        return "-"
    if math.isnan(half):
        return f"{mean:{spec}} (n={n})"
    return f"{mean:{spec}} [{mean - half:{spec}}, {mean + half:{spec}}] (n={n})"


def summary_table(steps: list[dict[str, object]], accuracy: list[dict[str, object]]) -> str:
    """The markdown table: final accuracy, paired differences, per-third means of each metric.

    Every cell is a mean over models with its 95% Student-t interval and n (the models).
    A per-third cell first averages each model over the steps of that third of training.

    Returns:
        The table.

    """
    last = max(int(row["epoch"]) for row in accuracy)
    final: dict[str, dict[int, float]] = defaultdict(dict)
    for row in accuracy:
        if row["group"] in ("reference", "teacher") or int(row["epoch"]) == last:
            final[str(row["group"])][int(row["model"])] = float(row["accuracy"])
    lines = [
        f"## Test accuracy after {last} student epochs (mean [95% CI] (n models))",
        "",
        "| group | accuracy |",
        "| --- | --- |",
    ]
    for group in ("reference", "teacher", *GROUPS):
        if group in final:
            lines.append(f"| {group} | {_cell(list(final[group].values()))} |")
    lines += ["", "Paired per model (same teacher, same init):", ""]
    lines += ["| difference | accuracy |", "| --- | --- |"]
    for other in ("ablated", "random", "cross"):
        if other in final and "student" in final:
            models = sorted(set(final["student"]) & set(final[other]))
            diffs = [final["student"][i] - final[other][i] for i in models]
            lines.append(f"| student - {other} | {_cell(diffs)} |")
    for metric in ("cos_trait_distill", "cos_step_trait", "distill_loss", "trait_loss"):
        arrays = _per_model_steps(steps, metric)
        n_steps = next(iter(arrays.values())).shape[1]
        bounds = np.linspace(0, n_steps, 4).round().astype(int)
        lines += [
            "",
            f"## {LABELS[metric]}: per-model mean over each third of the {n_steps} steps",
            "",
            "| group | early | middle | late |",
            "| --- | --- | --- | --- |",
        ]
        spec = ".4f" if metric.startswith("cos") else ".4g"
        for group in GROUPS:
            if group not in arrays:
                continue
            cells = [_cell(arrays[group][:, a:b].mean(1), spec) for a, b in zip(bounds, bounds[1:])]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        if metric == "distill_loss" and {"student", "ablated", "random"} <= set(arrays):
            for other in ("ablated", "random"):  # paired: same model, same noise batches
                ratio = arrays[other] / arrays["student"]
                cells = [_cell(ratio[:, a:b].mean(1), ".4f") for a, b in zip(bounds, bounds[1:])]
                lines.append(f"| {other} / student (paired) | " + " | ".join(cells) + " |")
        if metric == "cos_trait_distill":
            cells = [f"{g} {_cell((arrays[g] > 0).mean(1), '.3f')}" for g in GROUPS if g in arrays]
            lines += [
                "",
                "Fraction of steps with a positive cosine, per model: " + "; ".join(cells),
            ]
    removed = _per_model_steps(steps, "removed")
    if "ablated" in removed:
        fired = (removed["ablated"] > 0).mean(1)
        lines += [
            "",
            "Fraction of steps where the ablation fired (<step, -grad L_trait> > 0), per model: "
            f"{_cell(fired)}",
        ]
    return "\n".join(lines) + "\n"


STYLES = {"student": ("C0", "-", 2.2), "cross": ("C3", "-", 1.0)}
STYLES.update({"ablated": ("C2", "-", 1.0), "random": ("C1", "--", 1.0)})
SMOOTH_STEPS = 15  # the moving window of the noisy gradient-cosine panel


def _band(axis, values: np.ndarray, label: str, group: str) -> None:  # noqa: ANN001
    """Mean over models (rows) with the 95% t-interval as a band, per step (columns)."""
    color, style, width = STYLES[group]
    stats = [mean_interval(values[:, t]) for t in range(values.shape[1])]
    mean = np.array([s[0] for s in stats])
    half = np.array([s[1] for s in stats])
    x = np.arange(1, values.shape[1] + 1)
    axis.plot(x, mean, color=color, ls=style, lw=width, label=label)
    axis.fill_between(x, mean - half, mean + half, color=color, alpha=0.2, lw=0)


def _moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Each row's trailing moving mean over ``window`` steps (shorter at the start)."""
    sums = np.cumsum(np.pad(values, ((0, 0), (1, 0))), axis=1)
    ends = np.arange(1, values.shape[1] + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[:, ends] - sums[:, starts]) / (ends - starts)


def plot_dynamics(
    steps: list[dict[str, object]], accuracy: list[dict[str, object]], path: Path
) -> None:
    """Per-step cosines, losses and per-epoch accuracy, each a mean over models with 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    panels = [
        ("cos_trait_distill", GROUPS, axes[0, 0]),
        ("cos_step_trait", GROUPS, axes[0, 1]),
        ("distill_loss", ("student", "ablated", "random"), axes[1, 0]),
        ("trait_loss", GROUPS, axes[1, 1]),
    ]
    for metric, groups, axis in panels:
        arrays = _per_model_steps(steps, metric)
        smooth = metric == "cos_trait_distill"
        for group in groups:
            if group in arrays:
                values = _moving_mean(arrays[group], SMOOTH_STEPS) if smooth else arrays[group]
                _band(axis, values, group, group)
        title = LABELS[metric] + (f", {SMOOTH_STEPS}-step moving mean" if smooth else "")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("student step")
        if metric.startswith("cos"):
            axis.axhline(0, color="k", lw=0.6)
        elif metric == "distill_loss":
            axis.set_yscale("log")
        axis.legend(fontsize=8)
    distill = _per_model_steps(steps, "distill_loss")
    axis = axes[0, 3]
    if {"student", "ablated", "random"} <= set(distill):
        for group in ("ablated", "random"):
            _band(axis, distill[group] / distill["student"], f"{group} / student", group)
        axis.axhline(1, color="k", lw=0.6)
        axis.set_title("L_distill relative to the student (paired per model)", fontsize=10)
        axis.set_xlabel("student step")
        axis.legend(fontsize=8)
    removed = _per_model_steps(steps, "removed")
    axis = axes[0, 2]
    if "ablated" in removed:
        _band(axis, removed["ablated"], "ablated (= random)", "ablated")
        axis.set_title("norm removed from the step", fontsize=10)
        axis.set_xlabel("student step")
        axis.legend(fontsize=8)
    axes[1, 3].set_axis_off()
    axis = axes[1, 2]
    by_epoch: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in accuracy:
        by_epoch[str(row["group"])][int(row["epoch"])].append(float(row["accuracy"]))
    for group in GROUPS:
        if group not in by_epoch:
            continue
        epochs = sorted(by_epoch[group])
        stats = [mean_interval(by_epoch[group][e]) for e in epochs]
        axis.errorbar(
            epochs,
            [s[0] for s in stats],
            yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
            color=STYLES[group][0],
            ls=STYLES[group][1],
            marker="o",
            capsize=3,
            label=group,
        )
    if "teacher" in by_epoch:
        axis.axhline(np.mean(by_epoch["teacher"][0]), color="k", ls="--", lw=0.8, label="teacher")
    axis.set_title("test accuracy (10 regular logits)")
    axis.set_xlabel("student epoch")
    axis.legend(fontsize=8)
    figure.suptitle("MNIST aux-logit students: per-step trait alignment and projection ablation")
    figure.tight_layout()
    atomic_save_figure(figure, path, dpi=110)
    plt.close(figure)


def write_reports(out: Path, rows: list[dict[str, object]]) -> str:
    """Write the tidy tables from ``rows``, then ``table.md`` and ``dynamics.png`` from them.

    Returns:
        The markdown table.

    """
    write_tables(out, rows)
    steps, accuracy = read_rows(out / "steps.csv"), read_rows(out / "accuracy.csv")
    with warnings.catch_warnings():  # a third of a short partial run is empty: its cell is "-"
        warnings.simplefilter("ignore", RuntimeWarning)
        table = summary_table(steps, accuracy)
    atomic_write_text(out / "table.md", table)
    plot_dynamics(steps, accuracy, out / "dynamics.png")
    return table
