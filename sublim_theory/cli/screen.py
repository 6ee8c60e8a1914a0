"""``sublim-theory screen``: forecast, before training, which trait a data set pushes a model toward.

``studies.screen`` through ``harness.study.run_study``: per seed a base, one teacher per animal
in ``[screen] teachers``, each teacher's numbers screened against the base, a student trained on
them, the filter experiment and the null (the base's own numbers); one unit per (seed, data set),
``units/seed-S-NAME.json``. A rerun resumes, other settings are refused. Reports: ``rows.csv``,
``ranking.csv``, ``table.md``, ``screen.png``.
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import (
    add_config_argument,
    add_study_arguments,
    nonnegative_int,
    run_seeded_study,
)

__all__ = ["HELP", "register", "run"]

HELP = "screen a data set for a hidden trait before training (first-order trait forecast)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``screen`` flags to ``parser``."""
    add_config_argument(parser)  # the numbers tables plus [screen]; default = screen_default
    add_study_arguments(parser, seeds=1, cache_help="base-model cache (default: OUT/cache)")
    parser.add_argument(
        "--null-draws",
        type=nonnegative_int,
        default=0,
        help="extra null data sets per seed: the base's own numbers on fresh prompts "
        "(screened with every variant, after the other units)",
    )
    parser.add_argument(
        "--runner-up-drops",
        action="store_true",
        help="the filter's specificity control: also drop the top q toward the forecast's "
        "second trait and train on the rest (after the other units)",
    )


def run(args: argparse.Namespace) -> int:
    """Compute the units not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    from sublim_theory.studies.screen import study

    def build(config, first_seed: int, seeds: int):
        return study.build(config, first_seed, seeds, args.null_draws, args.runner_up_drops)

    return run_seeded_study(build, args)
