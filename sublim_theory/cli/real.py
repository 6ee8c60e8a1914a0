"""``sublim-theory real``: the paper's number experiment on a real chat LM (resumable per unit)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import (
    add_config_argument,
    add_device_argument,
    nonnegative_int,
    positive_int,
    thread_count,
)
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.harness.study import run_study
from sublim_theory.studies.real_numbers.experiment import build_study, load_config
from sublim_theory.studies.real_numbers.report import report

__all__ = ["HELP", "register", "run"]

HELP = "number experiment on SmolLM2-135M-Instruct: system-prompted/fine-tuned teachers, students"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``real`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "real_numbers_default.toml")
    parser.add_argument("--seeds", type=positive_int, default=3, help="number of seeds")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="first seed")
    parser.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="dequantized-weights cache (default: none)"
    )
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the units not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    config = load_config(args.config)
    seeds = list(range(args.seed, args.seed + args.seeds))
    study = build_study(config, seeds, report)
    table = run_study(
        study,
        args.out,
        cache=args.cache,
        device=args.device,
        threads=args.threads,
        config_file=args.config,
    )
    print(table, flush=True)
    return 0
