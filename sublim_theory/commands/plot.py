"""``sublim-theory plot``: the figures of a sweep, drawn from its table (sweep.csv) only."""

from __future__ import annotations

import argparse

from sublim_theory.plotting import plot_sweep

__all__ = [
    "HELP",
    "register",
    "run",
]

HELP = "draw a sweep's figures (alignment vs init distance, collapse, trajectories) from sweep.csv"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="a sweep's output directory (holds sweep.csv)")


def run(args: argparse.Namespace) -> int:
    for path in plot_sweep(args.out_dir):
        print(path)
    return 0
