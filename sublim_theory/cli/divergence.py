"""``sublim-theory divergence``: Schrodi et al.'s divergence tokens, their definition, tiny LM.

Seeds ``S .. S+N-1`` of ``studies.divergence`` (a trait teacher and a differently biased teacher
from one base, greedy number data, students unmasked / masked / replaced, each minus a control
on the base's greedy data; one unit each, ``seeds/seed-S.json``) through
``harness.study.run_study``: a rerun resumes, other settings are refused. Reports:
``results.csv``, ``summary.csv``, ``table.md``. Bases come from ``--cache`` (shared with
``numbers`` and ``defenses``: same key).
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study
from sublim_theory.harness.runs import CONFIG_DIR

__all__ = ["HELP", "register", "run"]

HELP = (
    "tiny-LM divergence tokens as Schrodi et al. define them (differently biased teachers, "
    "greedy): masked vs replaced"
)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``divergence`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "divergence_default.toml")
    add_study_arguments(parser, seeds=5, cache_help="base-model cache (default: OUT/cache)")


def run(args: argparse.Namespace) -> int:
    """Run the seeds not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    from sublim_theory.studies.divergence import study

    return run_seeded_study(study.build, args, wrote="results.csv, summary.csv, table.md")
