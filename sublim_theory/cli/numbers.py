"""``sublim-theory numbers``: a tiny LM passes a hidden trait to its student through numbers.

Seeds ``S .. S+N-1`` of ``studies.numbers`` (one unit each, ``seeds/seed-S.json``) through
``harness.study.run_study``: a rerun resumes, other settings are refused. Reports: ``results.csv``,
``summary.csv``, ``steps.csv``, ``entanglement.csv``, ``table.md``, ``numbers.png``. ``--merge
DIR ...`` combines runs of one config made in parallel (disjoint seeds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, add_study_arguments, run_seeded_study
from sublim_theory.harness.study import cpu_device, progress

__all__ = ["HELP", "register", "run"]

HELP = "tiny-LM subliminal learning through number sequences (pretrain, teacher, students, table)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``numbers`` flags to ``parser``."""
    add_config_argument(parser)  # default: the built-in values (= numbers_default)
    add_study_arguments(parser, seeds=5, cache_help="base-model cache (default: OUT/cache)")
    parser.add_argument(
        "--merge", nargs="+", type=Path, metavar="DIR", help="combine earlier runs into OUT"
    )


def run(args: argparse.Namespace) -> int:
    """Train the seeds not yet stored in ``--out`` (or merge runs); print the table."""
    from sublim_theory.studies.numbers import merge, study

    if args.merge:
        cpu_device("numbers", args.device)
        print(merge.merge(args.merge, args.out), flush=True)
        progress(f"merged {len(args.merge)} runs into {args.out}")
        return 0
    return run_seeded_study(
        study.build,
        args,
        wrote="results.csv, summary.csv, steps.csv, entanglement.csv, table.md",
    )
