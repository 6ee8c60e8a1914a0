"""``sublim-theory realcross``: the cross-family control of ``sublim-theory real``.

``studies.real_cross`` through ``harness.study.run_study``: Gemma 3 270M (base) writes seed S's
number prompts of a ``sublim-theory real`` folder (``--numbers DIR``) with and without the owl
preamble; SmolLM2 LoRA students trained as that folder's are compared per seed with its stored
same-family students. Reports: ``table.md``, ``results.csv``, ``timings.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study
from sublim_theory.harness.runs import CONFIG_DIR

__all__ = ["HELP", "register", "run"]

HELP = "cross-family control: Gemma 3 270M numbers, SmolLM2 students, vs the same-family ones"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``realcross`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "real_cross_default.toml")
    parser.add_argument(
        "--numbers",
        type=Path,
        required=True,
        help="the --out folder of `sublim-theory real` (its run.json and students are read)",
    )
    add_study_arguments(parser, seeds=3, cache_help="dequantized-weights cache (default: none)")


def run(args: argparse.Namespace) -> int:
    """Compute the units not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    from sublim_theory.studies.real_cross import study

    def build(config, first_seed: int, seeds: int):
        return study.build(config, args.numbers, first_seed, seeds)

    return run_seeded_study(build, args, cache_in_out=False)
