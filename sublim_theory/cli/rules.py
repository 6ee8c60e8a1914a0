"""``sublim-theory rules``: one student step per update rule x full/LoRA x placement (resumable)."""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, thread_count
from sublim_theory.studies.rules.experiment import DEFAULT_RULES_CONFIG
from sublim_theory.studies.rules.study import run_rules_sweep

__all__ = [
    "HELP",
    "register",
    "run",
]

HELP = "one-step sweep over update rules x full/LoRA ranks x placements (rules.csv, table, figure)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``rules`` flags to ``parser``."""
    add_config_argument(parser, default=DEFAULT_RULES_CONFIG)
    parser.add_argument("--out", required=True, help="output folder (rerun to resume)")
    parser.add_argument("--threads", type=thread_count, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the sweep: rules.csv, table.md and rules.png.

    Returns:
        0.

    """
    print(run_rules_sweep(args.config, args.out, not args.quiet, threads=args.threads))
    return 0
