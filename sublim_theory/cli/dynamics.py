"""``sublim-theory dynamics``: per-step trait-gradient alignment and the projection ablation on MNIST.

Trains the four student groups of :mod:`sublim_theory.studies.dynamics.experiment` (``student``, ``cross``,
``ablated``, ``random``; N models each) on the paper's MNIST aux-logit setup and logs, at every
step, cos(grad L_trait, grad L_distill), cos(step, -grad L_trait), L_distill and L_trait, and the
test accuracy after every epoch.

Values come from ``DynamicsConfig`` defaults, then a TOML config (``--config``), then flags.
Resumable: the teachers and the state after every finished epoch are stored atomically in
``--out``/``state.pt``; a rerun into the same folder continues from there (and refuses other
settings, ``run.json``). When the last epoch is done the state file is deleted and the reports are
written from the tidy tables: ``steps.csv`` (one row per group, model and step), ``accuracy.csv``
(one row per group, model and epoch; ``reference`` and ``teacher`` rows at epoch 0),
``table.md`` (mean, 95% t-interval, n), ``dynamics.png`` and ``environment.json``. A rerun of a
finished folder only rebuilds the reports from the CSVs.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from sublim_theory.cli.main import (
    add_config_argument,
    add_device_argument,
    positive_int,
    thread_count,
)
from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record, mean_interval
from sublim_theory.harness.runs import (
    OutputFolder,
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_toml,
    resolve_device,
)
from sublim_theory.studies.dynamics.experiment import (
    GROUPS,
    STEP_METRICS,
    DynamicsConfig,
    DynamicsState,
    start_state,
    train_epoch,
)
from sublim_theory.testbeds.mnist.data import load_mnist

__all__ = [
    "HELP",
    "STATE_NAME",
    "read_rows",
    "register",
    "run",
    "summary_table",
    "plot_dynamics",
    "write_tables",
]

HELP = "per-step trait-gradient alignment and the projection ablation on MNIST"
STATE_NAME = "state.pt"  # the resumable state; deleted once the run is complete
THIRDS = ("early", "middle", "late")
LABELS = {
    "cos_trait_distill": "cos(grad L_trait, grad L_distill)",
    "cos_step_trait": "cos(step, -grad L_trait)",
    "distill_loss": "L_distill (aux KL)",
    "trait_loss": "L_trait (digit CE)",
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``dynamics`` flags to ``parser``."""
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("out/dynamics"), help="output directory")
    parser.add_argument(
        "--mnist-dir", type=Path, help="the four MNIST IDX files; default: the embedded digits"
    )
    add_device_argument(parser)
    parser.add_argument("--models", type=positive_int, help="N models per group (default 10)")
    parser.add_argument("--student-epochs", type=positive_int, help="student epochs (default 5)")
    parser.add_argument("--noise-images", type=positive_int, help="noise images per model")
    parser.add_argument("--trait-digits", type=positive_int, help="digits defining L_trait")
    parser.add_argument("--seed", type=int, help="master seed (default 0)")
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _settings(args: argparse.Namespace) -> tuple[DynamicsConfig, Path | None]:
    raw: dict[str, object] = {}
    if args.config is not None:
        raw = dict(load_toml(args.config))
    mnist_dir = raw.pop("mnist_dir", None)
    if mnist_dir is not None and not isinstance(mnist_dir, str):
        raise InputError(f"{args.config}: mnist_dir must be a string, got {mnist_dir!r}")
    if raw.get("teacher_epochs") == "auto":
        del raw["teacher_epochs"]
    for name in ("models", "student_epochs", "noise_images", "trait_digits", "seed"):
        if getattr(args, name) is not None:
            raw[name] = getattr(args, name)
    source = f"{args.config} + command-line flags" if args.config else "command-line flags"
    config = DynamicsConfig.parse(raw, source)
    folder = args.mnist_dir if args.mnist_dir is not None else mnist_dir
    return config, None if folder is None else Path(folder)


def _save_state(path: Path, state: DynamicsState) -> None:
    buffer = io.BytesIO()
    torch.save({f.name: getattr(state, f.name) for f in fields(state)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_state(path: Path) -> DynamicsState:
    try:
        return DynamicsState(**torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # any unreadable file means the same thing to the user
        raise InputError(
            f"stored state '{path}' is unreadable ({type(error).__name__}); delete it to restart"
        ) from error


# --------------------------------------------------------------------------------------------
# tidy tables
# --------------------------------------------------------------------------------------------
def write_tables(out: Path, config: DynamicsConfig, state: DynamicsState) -> None:
    """``steps.csv`` and ``accuracy.csv`` from a finished (or partial) state."""
    n_models = config.models
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(["group", "model", "epoch", "step", *STEP_METRICS])
    n_steps = state.steps[STEP_METRICS[0]].shape[0]
    columns = [state.steps[name].numpy() for name in STEP_METRICS]
    for g, group in enumerate(GROUPS):
        for i in range(n_models):
            row_index = g * n_models + i
            for t in range(n_steps):
                values = [f"{column[t, row_index]:.6g}" for column in columns]
                writer.writerow([group, i, t // config.blocks + 1, t + 1, *values])
    atomic_write_text(out / "steps.csv", lines.getvalue())
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(["group", "model", "epoch", "accuracy"])
    for i in range(n_models):
        writer.writerow(["reference", i, 0, f"{state.reference_accuracy[i]:.6g}"])
        writer.writerow(["teacher", i, 0, f"{state.teacher_accuracy[i]:.6g}"])
    for g, group in enumerate(GROUPS):
        for i in range(n_models):
            for epoch in range(state.accuracy.shape[0]):
                value = float(state.accuracy[epoch, g * n_models + i])
                writer.writerow([group, i, epoch, f"{value:.6g}"])
    atomic_write_text(out / "accuracy.csv", lines.getvalue())


def read_rows(path: Path) -> list[dict[str, object]]:
    """A CSV this command wrote, numbers parsed (``group`` stays a string)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v if k == "group" else float(v) for k, v in row.items()} for row in rows]


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


def _reports(out: Path) -> str:
    steps, accuracy = read_rows(out / "steps.csv"), read_rows(out / "accuracy.csv")
    table = summary_table(steps, accuracy)
    atomic_write_text(out / "table.md", table)
    plot_dynamics(steps, accuracy, out / "dynamics.png")
    return table


def run(args: argparse.Namespace) -> int:
    """Validate every setting, then train (or resume) the four groups and write the reports.

    Returns:
        0 on success.

    Raises:
        InputError: for a bad config, flag, device, data folder or output folder, before any
            training.

    """
    config, mnist_dir = _settings(args)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    with OutputFolder(args.out, "dynamics") as folder:
        out = folder.path
        data = load_mnist(mnist_dir)
        folder.check_settings(
            {**asdict(config), "data": data.describe(), "device": device.type},
        )
        state_path = out / STATE_NAME
        complete = (out / "steps.csv").is_file() and not state_path.is_file()
        clock = time.perf_counter()
        if not complete:
            data = data.to(device)
            if state_path.is_file():
                state = _load_state(state_path)
                log(f"resuming after epoch {state.epoch} from {state_path}")
            else:
                log(f"teachers: {config.models} models, data {data.source}")
                state = start_state(config, data)
                log(
                    f"teachers: {state.teacher_epochs} epochs, accuracy "
                    f"{np.mean(state.teacher_accuracy):.3f} ({time.perf_counter() - clock:.0f}s)"
                )
                _save_state(state_path, state)
            state = _to(state, device)
            while state.epoch < config.student_epochs:
                state = train_epoch(config, data, state, log)
                _save_state(state_path, _to(state, "cpu"))
                log(f"  stored epoch {state.epoch} ({time.perf_counter() - clock:.0f}s)")
            write_tables(out, config, _to(state, "cpu"))
            atomic_write_json(
                out / "environment.json",
                environment_record(
                    str(device),
                    config=asdict(config),
                    config_file=None if args.config is None else str(args.config),
                    data=data.describe(),
                    teacher_epochs=state.teacher_epochs,
                    derangement=state.derangement,
                    seconds_this_session=time.perf_counter() - clock,
                ),
            )
            state_path.unlink()
        table = _reports(out)
    print(table, flush=True)
    log(f"wrote {out}/steps.csv, accuracy.csv, table.md, dynamics.png, environment.json")
    return 0


def _to(state: DynamicsState, device: torch.device | str) -> DynamicsState:
    """The state with its models and Adam moments on ``device``."""
    moved = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            value = value.to(device)
        elif f.name == "adam":  # the logged steps stay on the CPU
            value = {k: v.to(device) for k, v in value.items()}
        moved[f.name] = value
    return DynamicsState(**moved)
