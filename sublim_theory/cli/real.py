"""``sublim-theory real``: the paper's number experiment on a real chat LM (resumable per unit)."""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.real_numbers.experiment import build_study, load_config
from sublim_theory.studies.real_numbers.report import report

__all__ = ["HELP", "register", "run"]

HELP = "number experiment on SmolLM2-135M-Instruct: system-prompted/fine-tuned teachers, students"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``real`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "real_numbers_default.toml")
    add_study_arguments(parser, seeds=3, cache_help="dequantized-weights cache (default: none)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="compute nothing: rebuild the tables from the stored units",
    )


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the units not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """

    def build(config_file, first_seed: int, seeds: int):
        seed_list = list(range(first_seed, first_seed + seeds))
        return build_study(load_config(config_file), seed_list, report)

    return run_seeded_study(build, args, cache_in_out=False)
