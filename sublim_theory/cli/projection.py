"""``sublim-theory projection``: the screen's attributions exact and through a random projection.

``studies.screen_projection`` through ``harness.study.run_study``: per seed a base, one teacher
per animal in ``[projection] teachers`` and the base's own numbers; every data set scored
exactly and through a random projection of the gradients to each d in ``[projection] dims``.
One unit per (seed, data set), ``units/seed-S-NAME.json``; a rerun resumes, other settings are
refused. Reports: ``table.md``, ``summary.csv``, ``rows.csv``.
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study

__all__ = ["HELP", "register", "run"]

HELP = "the screen's attributions exact vs through a random projection of the gradients"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``projection`` flags to ``parser``."""
    add_config_argument(parser)  # the numbers tables plus [projection]; default = built-ins
    add_study_arguments(parser, seeds=1, cache_help="base-model cache (default: OUT/cache)")


def run(args: argparse.Namespace) -> int:
    """Compute the units not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    from sublim_theory.studies.screen_projection import study

    return run_seeded_study(study.build, args)
