"""``sublim-theory dynamics``: per-step trait-gradient alignment and the projection ablation on MNIST.

Trains the four student groups of ``studies.dynamics.experiment`` and logs every step's
alignment and losses; values: ``DynamicsConfig`` defaults < ``--config`` < flags
(``studies.dynamics.study.resolve_config``). Resumable epoch by epoch
(``studies.dynamics.study.run_dynamics``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import (
    add_config_argument,
    add_device_argument,
    positive_int,
    thread_count,
)
from sublim_theory.harness.study import progress
from sublim_theory.studies.dynamics.study import resolve_config, run_dynamics

__all__ = ["HELP", "register", "run"]

HELP = "per-step trait-gradient alignment and the projection ablation on MNIST"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``dynamics`` flags to ``parser``."""
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("out/dynamics"), help="output directory")
    parser.add_argument(
        "--mnist-dir", type=Path, help="the four MNIST IDX files; default: the embedded digits"
    )
    add_device_argument(parser)
    parser.add_argument("--models", type=positive_int, help="N models per group (default 10)")
    parser.add_argument("--student-epochs", type=positive_int, help="student epochs (default 5)")
    parser.add_argument("--noise-images", type=positive_int, help="noise images per model")
    parser.add_argument("--trait-digits", type=positive_int, help="digits defining L_trait")
    parser.add_argument("--seed", type=int, help="master seed (default 0)")
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the four groups epoch by epoch; print the table.

    Returns:
        0 on success.

    """
    config, mnist_dir = resolve_config(args.config, vars(args), args.mnist_dir)
    log = (lambda *parts: None) if args.quiet else progress
    table = run_dynamics(
        config,
        mnist_dir,
        args.out,
        device=args.device,
        threads=args.threads,
        config_file=args.config,
        log=log,
    )
    print(table, flush=True)
    return 0
