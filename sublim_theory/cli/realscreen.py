"""``sublim-theory realscreen``: the trait screen on the real number experiment's data sets."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sublim_theory.cli.main import (
    add_config_argument,
    add_device_argument,
    run_declared_study,
    thread_count,
)
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.real_screen.experiment import build_study, load_config
from sublim_theory.studies.real_screen.report import make_report

__all__ = ["HELP", "register", "run"]

HELP = "screen the real number data sets (10 animals) vs the base's own; forecast vs students"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``realscreen`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "real_screen_default.toml")
    add = parser.add_argument
    add("--numbers", type=Path, required=True, help="the --out folder of `sublim-theory real`")
    add("--out", type=Path, required=True, help="output folder (rerun to resume)")
    add("--model", default=None, help="override the config's model (name or local directory)")
    add("--cache", type=Path, default=None, help="dequantized-weights cache (default: none)")
    add("--threads", type=thread_count, default=None, help="torch CPU threads")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the data sets not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    config = load_config(args.config)
    if args.model is not None:
        config = dataclasses.replace(config, model=args.model)
    report = make_report(args.numbers, config.bootstrap, config.permutations, config.model)
    study = build_study(config, args.numbers, report)
    return run_declared_study(study, args, cache_in_out=False)
