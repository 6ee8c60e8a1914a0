"""``sublim-theory realgrid``: optimizers x LoRA ranks / full FT on the real model's numbers.

``studies.real_grid`` through ``harness.study.run_study``: students trained without the system
prompt on a ``sublim-theory real`` folder's stored completions (``--numbers DIR``), one unit per
(arm, method, optimizer, lr, seed), ``units/KEY.json``; a rerun resumes, other settings are
refused. Reports: ``table.md`` (with the Blank et al. and Nief et al. verdict rows),
``results.csv``, ``timings.md`` (wall time per unit and the estimate for the rest).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study
from sublim_theory.harness.runs import CONFIG_DIR

__all__ = ["HELP", "register", "run"]

HELP = "Adam/SGD/SignSGD x LoRA ranks/full FT students on the real model's stored numbers"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``realgrid`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "real_grid_default.toml")
    parser.add_argument(
        "--numbers",
        type=Path,
        required=True,
        help="the --out folder of `sublim-theory real` (its completions/ are read)",
    )
    add_study_arguments(parser, seeds=3, cache_help="dequantized-weights cache (default: none)")


def run(args: argparse.Namespace) -> int:
    """Compute the students not yet stored in ``--out``; print the tables.

    Returns:
        0.

    """
    from sublim_theory.studies.real_grid import study

    def build(config, first_seed: int, seeds: int):
        return study.build(config, args.numbers, first_seed, seeds)

    return run_seeded_study(build, args, cache_in_out=False)
