"""``sublim-theory plot``: the figures of a sweep, drawn from its table (sweep.csv) only."""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import OutputFolder
from sublim_theory.studies.init_distance.plot import plot_sweep

__all__ = [
    "HELP",
    "register",
    "run",
]

HELP = "draw a sweep's figures (alignment vs init distance, collapse, trajectories) from sweep.csv"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``plot`` flags to ``parser``."""
    parser.add_argument("out_dir", help="a sweep's output directory (holds sweep.csv)")


def run(args: argparse.Namespace) -> int:
    """Draw the figures into the sweep's folder, holding its lock (not while a sweep writes).

    Returns:
        0 on success.

    Raises:
        InputError: no such folder, another run holds it, or its table is damaged.

    """
    if not Path(args.out_dir).is_dir():
        raise InputError(f"'{args.out_dir}' is not a folder; pass a sweep's --out folder")
    with OutputFolder(args.out_dir, "plot"):
        for path in plot_sweep(args.out_dir):
            print(path)
    return 0
