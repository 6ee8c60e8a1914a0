"""Run the sign-step population study into a folder, one resumable unit at a time.

    python experiments/sign_population.py --config sign_population_default \
        --out experiments/results/sign_population --threads 1

A thin driver around :func:`sublim_theory.studies.sign_population.study.run_sign_population`
(``harness.study.run_study``): each block of problems is stored atomically as
``OUT/units/<name>.json`` with the settings' fingerprint; a rerun skips the stored blocks, refuses
other settings (``run.json``) and rebuilds ``sign_population.csv``, ``rates.csv``,
``predictors.csv``, ``logistic.csv`` and ``table.md`` from all blocks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.studies.sign_population.study import run_sign_population

DEFAULT_CONFIG = "sign_population_default"


def run(config_path: str | Path, out: str | Path, quiet: bool = False, threads: int = 1) -> str:
    """Run (or resume) every unit, then write the report; return the table."""
    return run_sign_population(
        config_path, out, threads=threads, log=(lambda *a: None) if quiet else print
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input (one line on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=runs.config_file, default=runs.config_file(DEFAULT_CONFIG))
    parser.add_argument("--out", required=True, help="output folder (rerun to resume)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        print(run(args.config, args.out, args.quiet, args.threads))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
