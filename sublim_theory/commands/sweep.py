"""``sublim-theory sweep``: alignment over architectures x inits x eps x seeds (resumable)."""

from __future__ import annotations

import argparse
import sys

from sublim_theory.sweep import EXECUTORS, run_sweep

HELP = "resumable sweep of alignment vs student-init distance (writes sweep.csv + environment.json)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        help="sweep config (TOML), e.g. experiments/configs/init_distance.toml",
    )
    parser.add_argument("--out", required=True, help="output directory (rerun to resume)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="local")
    parser.add_argument(
        "--address",
        default=None,
        help="with --executor ray: the cluster to join (default: a private local instance)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    table = run_sweep(
        args.config,
        args.out,
        args.device,
        args.executor,
        progress=not args.quiet,
        address=args.address,
    )
    print(f"sweep table: {table}", file=sys.stdout)
    print(f"plot it with: sublim-theory plot {args.out}")
    return 0
