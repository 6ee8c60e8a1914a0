"""``sublim-theory coverage``: Madl's claim (arXiv 2606.22019), coverage predicts transfer.

``studies.claims`` through ``harness.study.run_study``: per seed, teachers (animal x teacher
steps), the coverage of each student's first update and the engine's first-order forecast, per
channel (full loss; the trait token masked out of the student's loss), against the measured
transfer (``seeds/seed-S.json``); a rerun resumes. Reports: ``results.csv``, ``summary.csv``,
``table.md``.
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study

__all__ = ["HELP", "register", "run"]

HELP = "tiny LM: coverage vs the first-order forecast as predictors of transfer (Madl 2026)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``coverage`` flags to ``parser``."""
    add_config_argument(parser)  # default: the numbers defaults and [coverage]'s defaults
    add_study_arguments(parser, seeds=3, cache_help="base-model cache (default: OUT/cache)")


def run(args: argparse.Namespace) -> int:
    """Run the seeds not yet stored; print the table.

    Returns:
        0.

    """
    from sublim_theory.studies.claims import study

    return run_seeded_study(study.build_coverage, args)
