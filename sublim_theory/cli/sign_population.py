"""``sublim-theory sign-population``: how often a sign step raises the trait loss, over problems.

``studies.sign_population`` through ``harness.study.run_study``: problems drawn per stratum
(architecture, channel, parameterization, teacher, loss), one block of problems a unit,
``units/NAME.json``; a rerun resumes, other settings are refused. Reports:
``sign_population.csv``, ``rates.csv``, ``predictors.csv``, ``logistic.csv``, ``table.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, run_declared_study, thread_count
from sublim_theory.harness.runs import CONFIG_DIR

__all__ = ["HELP", "register", "run"]

HELP = "sign-step population: how often a sign step raises the trait loss (rates, predictors)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``sign-population`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "sign_population_default.toml")
    parser.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
    parser.add_argument("--threads", type=thread_count, default=1, help="torch CPU threads")
    parser.set_defaults(cache=None, device="cpu")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the blocks not yet stored in ``--out``; print the table.

    Returns:
        0.

    """
    from sublim_theory.studies.sign_population.study import build

    return run_declared_study(build(args.config), args, cache_in_out=False)
