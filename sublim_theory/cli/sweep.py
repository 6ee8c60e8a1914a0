"""``sublim-theory sweep``: alignment over architectures x inits x eps x seeds (resumable)."""

from __future__ import annotations

import argparse
import sys

from sublim_theory.cli.main import add_config_argument
from sublim_theory.studies.init_distance import EXECUTORS, run_sweep
from sublim_theory.studies.init_distance.executors import DEFAULT_RAY_TIMEOUT

__all__ = [
    "HELP",
    "register",
    "run",
]

HELP = "resumable sweep of alignment vs student-init distance (writes sweep.csv + run.json)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``sweep`` flags to ``parser``."""
    add_config_argument(parser, required=True)
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (rerun to resume; a rerun may add grid values, not change settings)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="local")
    parser.add_argument(
        "--address",
        default=None,
        help="with --executor ray: the cluster to join (default: a private local instance)",
    )
    parser.add_argument(
        "--ray-timeout",
        type=float,
        default=DEFAULT_RAY_TIMEOUT,
        metavar="SECONDS",
        help=f"with --executor ray: give up reaching Ray after this long (default {DEFAULT_RAY_TIMEOUT:g})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the sweep into ``--out``; print its table."""
    table = run_sweep(
        args.config,
        args.out,
        args.device,
        args.executor,
        progress=not args.quiet,
        address=args.address,
        ray_timeout=args.ray_timeout,
    )
    print(f"sweep table: {table}", file=sys.stdout)
    print(f"plot it with: sublim-theory plot {args.out}")
    return 0
