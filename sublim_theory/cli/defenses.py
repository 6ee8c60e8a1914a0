"""``sublim-theory defenses``: token-level channels and defenses in the tiny LM.

Seeds ``S .. S+N-1`` of ``studies.defenses`` (divergence-token masking, truncated sampling of
teacher and base, the poisoned-fraction sweep; one unit each, ``seeds/seed-S.json``) through
``harness.study.run_study``: a rerun resumes, other settings are refused. Reports:
``results.csv``, ``summary.csv``, ``slopes.csv``, ``table.md``, ``defenses.png``. Bases come
from ``--cache`` (shared with ``numbers``: same key).
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study
from sublim_theory.harness.runs import CONFIG_DIR

__all__ = ["HELP", "register", "run"]

HELP = "tiny-LM defenses: divergence-token masking, top-p / min-prob sampling, poisoned fraction"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``defenses`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "defenses_default.toml")
    add_study_arguments(parser, seeds=3, cache_help="base-model cache (default: OUT/cache)")


def run(args: argparse.Namespace) -> int:
    """Run the seeds not yet stored in ``--out``; print the tables."""
    from sublim_theory.studies.defenses import study

    return run_seeded_study(
        study.build,
        args,
        wrote="results.csv, summary.csv, slopes.csv, table.md, defenses.png",
    )
