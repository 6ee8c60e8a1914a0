"""``sublim-theory check``: the one-step alignment report for a named architecture and loss."""

from __future__ import annotations

import argparse
import json

from sublim_theory.engine.losses import LOSSES
from sublim_theory.harness.runs import DTYPES
from sublim_theory.models.architectures import ARCHITECTURES
from sublim_theory.studies.check import KL_TEMPERATURE, check, format_table

__all__ = ["HELP", "register", "run"]

HELP = "one-step teacher/student alignment report (exact, first order, second order)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` flags to ``parser``."""
    parser.add_argument("--arch", choices=ARCHITECTURES, default="mlp")
    parser.add_argument("--loss", choices=sorted(LOSSES), default="softmax_ce")
    parser.add_argument("--eps", type=float, default=1e-4, help="teacher step size (> 0)")
    parser.add_argument(
        "--aux",
        type=int,
        default=0,
        metavar="K",
        help="append K auxiliary outputs; the teacher trains the 10 regular ones, the student "
        "imitates only the K auxiliary ones (0: the student imitates all outputs)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=KL_TEMPERATURE,
        metavar="TAU",
        help=f"KL temperature (default {KL_TEMPERATURE:g}: at 1, KL has softmax_ce's gradient)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=64, help="number of distillation inputs")
    parser.add_argument("--all", action="store_true", help="every architecture x loss, as a table")
    parser.add_argument("--json", action="store_true", help="print the report(s) as JSON")


def run(args: argparse.Namespace) -> int:
    """Check the alignment theorem on the chosen architectures and losses; print the table."""
    archs = ARCHITECTURES if args.all else (args.arch,)
    losses = sorted(LOSSES) if args.all else (args.loss,)
    rows = []
    for arch in archs:
        for loss in losses:
            report = check(
                arch,
                loss,
                args.eps,
                args.aux,
                args.seed,
                DTYPES[args.dtype],
                args.width,
                args.depth,
                args.inputs,
                args.temperature,
            )
            tau = {"temperature": args.temperature} if loss == "kl" else {}
            rows.append({"arch": arch, **report.to_dict(), **tau})
    if args.json:
        print(json.dumps(rows if args.all else rows[0], indent=2))
    else:
        print(
            f"eps = {args.eps:g}, dtype = {args.dtype}, aux = {args.aux}, seed = {args.seed}, "
            f"KL tau = {args.temperature:g}"
        )
        print(format_table(rows))
    return 0
