"""``sublim-theory adamstate``: Xu's claim (arXiv 2608.20442), the trait stored in Adam's state.

``studies.claims`` through ``harness.study.run_study``: per seed, the teacher's Adam moments
(first only, second only, both, neither) transplanted into a fresh student at the base, the
trait read at the cut and after k source-free steps (``seeds/seed-S.json``); a rerun resumes.
Reports: ``results.csv``, ``table.md``.
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study

__all__ = ["HELP", "register", "run"]

HELP = "tiny LM: transplant a trait teacher's Adam moments into a fresh student (Xu 2026)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``adamstate`` flags to ``parser``."""
    add_config_argument(parser)  # default: the numbers defaults and [adam_state]'s defaults
    add_study_arguments(parser, seeds=5, cache_help="base-model cache (default: OUT/cache)")


def run(args: argparse.Namespace) -> int:
    """Run the seeds not yet stored; print the table.

    Returns:
        0.

    """
    from sublim_theory.studies.claims import study

    return run_seeded_study(study.build_adam_state, args)
