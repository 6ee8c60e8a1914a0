"""``sublim-theory realgrid``: optimizers x LoRA ranks / full FT on the real model's numbers.

``studies.real_grid`` through ``harness.study.run_study``: students trained without the system
prompt on a ``sublim-theory real`` folder's stored completions (``--numbers DIR``), one unit per
(arm, method, optimizer, lr, seed), ``units/KEY.json``; a rerun resumes, other settings are
refused. Reports: ``table.md`` (with the Blank et al. and Nief et al. verdict rows),
``results.csv``, ``timings.md`` (wall time per unit and the estimate for the rest).
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_numbers_study_arguments, run_numbers_study

__all__ = ["HELP", "register", "run"]

HELP = "Adam/SGD/SignSGD x LoRA ranks/full FT students on the real model's stored numbers"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``realgrid`` flags to ``parser``."""
    add_numbers_study_arguments(parser, "real_grid_default", "its completions/ are read")


def run(args: argparse.Namespace) -> int:
    """Compute the students not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    from sublim_theory.studies.real_grid import study

    return run_numbers_study(study.build, args)
