"""``sublim-theory finetune``: tiny-LM students across optimizers and LoRA ranks, paired controls.

``studies.finetune`` through ``harness.study.run_study``: each (optimizer, parameterization)
cell's learning rate is chosen once on one seed (``selection.json``, ``lr_grid.csv``), then seeds
``S .. S+N-1`` train every cell's student and control (one unit each, ``seeds/seed-S.json``); a
rerun resumes, other settings are refused. Reports: ``results.csv``, ``steps.csv``,
``table.md``, ``finetune.png``.
"""

from __future__ import annotations

import argparse

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study

__all__ = ["HELP", "register", "run"]

HELP = "tiny-LM students across optimizers (adam/sgd/signsgd) and LoRA ranks, paired controls"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``finetune`` flags to ``parser``."""
    add_config_argument(parser)  # default: the numbers defaults and the default design
    add_study_arguments(parser, seeds=3, cache_help="base-model cache (default: OUT/cache)")


def run(args: argparse.Namespace) -> int:
    """Choose the learning rates (once), train the seeds not yet stored; print the table."""
    from sublim_theory.studies.finetune import study

    return run_seeded_study(study.build, args)
