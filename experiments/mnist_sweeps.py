"""Print an MNIST run's measured accuracies beside sourced public figures.

Run the experiment first, then compare, e.g.:

    sublim-theory mnist --models 10 --out out/mnist
    python experiments/mnist_sweeps.py out/mnist/table.csv
    sublim-theory mnist --config experiments/configs/mnist_noise_sweep.toml --out out/mnist_noise
    python experiments/mnist_sweeps.py out/mnist_noise/table.csv
    sublim-theory mnist --config experiments/configs/mnist_aux_sweep.toml --out out/mnist_aux
    python experiments/mnist_sweeps.py out/mnist_aux/table.csv

Studies (``[[cells]]`` configs) are compared from their ``models.csv``:

    sublim-theory mnist --config experiments/configs/mnist_grid.toml --out out/grid
    python experiments/mnist_sweeps.py out/grid/models.csv

Reads only the tidy ``table.csv`` (or ``models.csv``) the command writes. Every public figure is
printed with its source. None of them is from the paper itself, which states only that the aux-only student
reaches "over 50%"; they are community reruns on full MNIST, while our embedded data is a
5,000-digit subset, so compare orderings and trends, not decimals. The aux-logit-count sweep
(m = 1, 2, 3, 5, 10) has no verified published counterpart: it is printed as ours alone.
"""

from __future__ import annotations

import argparse

from sublim_theory.harness.records import mean_interval
from sublim_theory.studies.mnist.report import read_models, read_table

PAPER = "Cloud et al. 2025 (paper): aux-only student 'over 50%'"
DIVYAT = "divyat09/takehome_anthropic, 25 models"
BARATH = "barathvelmu/subliminal-learning, 25 models x 5 seeds"
JASSHONE = "jasshone/takehome (community take-home, not the paper)"

# m = 3, shared init, full MNIST: (row of our table, figure, source).
PUBLISHED_BASELINE = (
    ("student_aux", "0.551 +- 0.037", DIVYAT),
    ("student_aux", "0.463 +- 0.023", BARATH),
    ("student_aux", "> 0.50", PAPER),
    ("cross_aux", "0.122", DIVYAT),
)
# Aux-only student accuracy against student-init noise s x each tensor's std (m = 3).
PUBLISHED_STUDENT_NOISE = {0.0: 0.55, 0.1: 0.53, 0.2: 0.42, 0.4: 0.26}


# One factor at a time around the default, aux-only student, m = 3, full MNIST:
# (factor, level as our models.csv writes it) -> (figure, source). The default level of each
# factor is our baseline cell. Teacher epochs: the source's 1/2/5/10 epochs of 59 steps are
# ours 15/30/74/148 epochs of 4 steps (60/120/296/592 steps).
PUBLISHED_GRID = {
    ("distillation_loss", "kl"): (0.451, BARATH),
    ("distillation_loss", "mse"): (0.566, BARATH),
    ("distillation_inputs", "uniform"): (0.451, BARATH),
    ("distillation_inputs", "gaussian"): (0.447, BARATH),
    ("distillation_inputs", "real"): (0.146, BARATH),
    ("lr", "0.0001"): (0.318, DIVYAT),
    ("lr", "0.0003"): (0.551, DIVYAT),
    ("lr", "0.001"): (0.702, DIVYAT),
    ("lr", "0.003"): (0.293, DIVYAT),
    ("lr", "0.01"): (0.099, DIVYAT),
    ("batch_size", "256"): (0.683, DIVYAT),
    ("batch_size", "1024"): (0.551, DIVYAT),
    ("batch_size", "4096"): (0.352, DIVYAT),
    ("weight_decay", "0"): (0.551, DIVYAT),
    ("weight_decay", "0.0001"): (0.120, DIVYAT),
    ("weight_decay", "0.001"): (0.091, DIVYAT),
    ("hidden", "64x64"): (0.423, BARATH),
    ("hidden", "128x128"): (0.480, BARATH),
    ("hidden", "256x256"): (0.451, BARATH),
    ("hidden", "512x512"): (0.341, BARATH),
    ("teacher_epochs", "15"): (0.602, DIVYAT),
    ("teacher_epochs", "30"): (0.603, DIVYAT),
    ("teacher_epochs", "74"): (0.551, DIVYAT),
    ("teacher_epochs", "148"): (0.466, DIVYAT),
}
# the default value of each grid factor: where the baseline cell sits on that factor's axis
GRID_DEFAULTS = {
    "distillation_loss": "kl",
    "distillation_inputs": "uniform",
    "lr": "0.0003",
    "batch_size": "1024",
    "weight_decay": "0",
    "hidden": "256x256",
    "teacher_epochs": "74",
}


def compare_study(path: str) -> str:
    """Every student row of a study's ``models.csv`` (mean, 95% CI, n), beside any public figure.

    A grid cell's (factor, level) is looked up in ``PUBLISHED_GRID``; the baseline cell is shown
    once per factor, at that factor's default level.
    """
    cells: dict[tuple[str, str, str], list[float]] = {}
    for row in read_models(path):
        if row["row"] not in ("reference", "teacher"):
            key = (row["factor"], row["level"], row["row"])
            cells.setdefault(key, []).append(row["accuracy"])
    lines = [f"{'factor':<20} {'level':<14} {'row':<14} {'ours (95% CI)':<22} n  public  source"]
    for factor in dict.fromkeys(f for f, _, _ in cells if f != "baseline"):
        entries = [
            (level, name, values) for (f, level, name), values in cells.items() if f == factor
        ]
        if factor in GRID_DEFAULTS:  # the baseline cell, at this factor's default level
            baseline = [(name, v) for (f, _, name), v in cells.items() if f == "baseline"]
            entries = [(GRID_DEFAULTS[factor], name, v) for name, v in baseline] + entries
        for level, name, values in entries:
            mean, half, n = mean_interval(values)
            figure, source = PUBLISHED_GRID.get((factor, level), (None, ""))
            shown = f"{figure:.3f}" if figure is not None and name == "student_aux" else "-"
            ours = f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"
            lines.append(
                f"{factor:<20} {level:<14} {name:<14} {ours:<22}{n:>2d}  {shown:>6}  "
                + (source if shown != "-" else "")
            )
    return "\n".join(lines)


def _interval(row: dict) -> str:
    return f"{row['mean']:.3f} [{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]"


def compare(path: str) -> str:
    """The comparison table for one ``table.csv`` (aux-count sweep, noise sweep or one run)."""
    table = read_table(path)
    students = [r for r in table if r["row"] == "student_aux"]
    if len({r["aux_logits"] for r in students}) > 1:  # one line per m, at the smallest noise
        lowest = min(r["student_noise"] for r in students)
        lines = [
            f"{'aux_logits':>14}  {'student_aux (95% CI)':<26}  n  (ours; no published m sweep)"
        ]
        for row in sorted(students, key=lambda r: r["aux_logits"]):
            if row["student_noise"] == lowest:
                n = int(row["n_models"])
                lines.append(f"{int(row['aux_logits']):>14d}  {_interval(row):<26}{n:>3d}")
        return "\n".join(lines)
    if len({r["student_noise"] for r in students}) > 1:
        lines = [f"{'student_noise':>14}  {'student_aux (95% CI)':<26}  n  {'public':>6}  source"]
        for row in sorted(students, key=lambda r: r["student_noise"]):
            public = PUBLISHED_STUDENT_NOISE.get(row["student_noise"])
            figure, source = ("-", "none") if public is None else (f"{public:.2f}", JASSHONE)
            n = int(row["n_models"])
            lines.append(
                f"{row['student_noise']:>14g}  {_interval(row):<26}{n:>3d}  {figure:>6}  {source}"
            )
        return "\n".join(lines)
    ours = {r["row"]: r for r in table}
    m = {int(r["aux_logits"]) for r in table}
    if m != {3}:
        return f"m = {sorted(m)}: the sourced public figures are for m = 3 only; nothing to compare"
    lines = [f"{'row':<12}  {'ours (95% CI)':<26}  {'public':<15}  source"]
    for name, figure, source in PUBLISHED_BASELINE:
        measured = _interval(ours[name]) if name in ours else "not run"
        lines.append(f"{name:<12}  {measured:<26}  {figure:<15}  {source}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="table.csv or models.csv written by `sublim-theory mnist`")
    path = parser.parse_args().table
    print(compare_study(path) if path.endswith("models.csv") else compare(path))


if __name__ == "__main__":
    main()
