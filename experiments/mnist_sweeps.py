"""Print an MNIST run's measured accuracies beside sourced public figures.

Run the experiment first, then compare, e.g.:

    sublim-theory mnist --models 10 --out out/mnist
    python experiments/mnist_sweeps.py out/mnist/table.csv
    sublim-theory mnist --config experiments/configs/mnist_noise_sweep.toml --out out/mnist_noise
    python experiments/mnist_sweeps.py out/mnist_noise/table.csv
    sublim-theory mnist --config experiments/configs/mnist_aux_sweep.toml --out out/mnist_aux
    python experiments/mnist_sweeps.py out/mnist_aux/table.csv

Reads only the tidy ``table.csv`` the command writes. Every public figure is printed with its
source. None of them is from the paper itself, which states only that the aux-only student
reaches "over 50%"; they are community reruns on full MNIST, while our embedded data is a
5,000-digit subset, so compare orderings and trends, not decimals. The aux-logit-count sweep
(m = 1, 2, 3, 5, 10) has no verified published counterpart: it is printed as ours alone.
"""

from __future__ import annotations

import argparse

from sublim_theory.mnist.report import read_table

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
    parser.add_argument("table", help="table.csv written by `sublim-theory mnist`")
    print(compare(parser.parse_args().table))


if __name__ == "__main__":
    main()
