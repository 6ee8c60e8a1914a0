"""Print an MNIST sweep's measured accuracies beside the published ones (THEORY.md section 6).

Run a sweep first, then compare, e.g.:

    sublim-theory mnist --config experiments/configs/mnist_aux_sweep.toml --out out/mnist_aux
    python experiments/mnist_sweeps.py out/mnist_aux/table.csv
    sublim-theory mnist --config experiments/configs/mnist_noise_sweep.toml --out out/mnist_noise
    python experiments/mnist_sweeps.py out/mnist_noise/table.csv

Reads only the tidy ``table.csv`` the command writes.
"""

from __future__ import annotations

import argparse
import math

from sublim_theory.mnist.report import read_table

# Published aux-only accuracies on full MNIST (public reruns of the official code).
PUBLISHED_AUX_LOGITS = {1: 0.10, 2: 0.35, 3: 0.54, 5: 0.70, 10: 0.84, 20: 0.89}
PUBLISHED_STUDENT_NOISE = {0.0: 0.55, 0.1: 0.53, 0.2: 0.42, 0.4: 0.26}


def compare(path: str) -> str:
    table = read_table(path)
    students = [r for r in table if r["row"] == "student_aux"]
    by_m = len({r["aux_logits"] for r in students}) > 1
    if by_m:  # one line per m, at the smallest init noise
        students = [
            r for r in students if r["student_noise"] == min(r["student_noise"] for r in students)
        ]
    key, published = (
        ("aux_logits", PUBLISHED_AUX_LOGITS) if by_m else ("student_noise", PUBLISHED_STUDENT_NOISE)
    )
    lines = [f"{key:>14}  {'student_aux (95% CI)':<26}{'published':>10}  n"]
    for row in sorted(students, key=lambda r: r[key]):
        value = int(row[key]) if by_m else row[key]
        ref = published.get(value, math.nan)
        interval = f"{row['mean']:.3f} [{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]"
        lines.append(f"{value:>14g}  {interval:<26}{ref:>10.2f}  {int(row['n_models'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="table.csv written by `sublim-theory mnist`")
    print(compare(parser.parse_args().table))


if __name__ == "__main__":
    main()
