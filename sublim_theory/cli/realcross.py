"""``sublim-theory realcross``: the cross-family control of ``sublim-theory real``.

``studies.real_cross`` through ``harness.study.run_study``: Gemma 3 270M (base) writes seed S's
number prompts of a ``sublim-theory real`` folder (``--numbers DIR``) with and without the owl
preamble; SmolLM2 LoRA students trained as that folder's are compared per seed with its stored
same-family students. Reports: ``table.md``, ``results.csv``, ``timings.md``.
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_numbers_study_arguments, run_numbers_study

__all__ = ["HELP", "register", "run"]

HELP = "cross-family control: Gemma 3 270M numbers, SmolLM2 students, vs the same-family ones"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``realcross`` flags to ``parser``."""
    add_numbers_study_arguments(parser, "real_cross_default", "its run.json and students are read")


def run(args: argparse.Namespace) -> int:
    """Compute the units not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    from sublim_theory.studies.real_cross import study

    return run_numbers_study(study.build, args)
