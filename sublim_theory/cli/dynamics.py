"""``sublim-theory dynamics``: per-step trait-gradient alignment and the projection ablation on MNIST.

Trains the four student groups of :mod:`sublim_theory.studies.dynamics.experiment` (``student``,
``cross``, ``ablated``, ``random``; N models each) on the paper's MNIST aux-logit setup and logs,
at every step, cos(grad L_trait, grad L_distill), cos(step, -grad L_trait), L_distill and
L_trait, and the test accuracy after every epoch.

Values come from ``DynamicsConfig`` defaults, then a TOML config (``--config``), then flags.
Resumable epoch by epoch (:mod:`sublim_theory.studies.dynamics.study`): each finished epoch is
stored in ``--out``/units; a rerun continues from there (and refuses other settings,
``run.json``). Writes ``steps.csv``, ``accuracy.csv``, ``table.md``, ``dynamics.png`` and
``environment.json``.
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
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import load_toml
from sublim_theory.harness.study import progress
from sublim_theory.studies.dynamics.experiment import DynamicsConfig
from sublim_theory.studies.dynamics.study import run_dynamics

__all__ = [
    "HELP",
    "register",
    "run",
]

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


def _settings(args: argparse.Namespace) -> tuple[DynamicsConfig, Path | None]:
    raw: dict[str, object] = {}
    if args.config is not None:
        raw = dict(load_toml(args.config))
    mnist_dir = raw.pop("mnist_dir", None)
    if mnist_dir is not None and not isinstance(mnist_dir, str):
        raise InputError(f"{args.config}: mnist_dir must be a string, got {mnist_dir!r}")
    if raw.get("teacher_epochs") == "auto":
        del raw["teacher_epochs"]
    for name in ("models", "student_epochs", "noise_images", "trait_digits", "seed"):
        if getattr(args, name) is not None:
            raw[name] = getattr(args, name)
    source = f"{args.config} + command-line flags" if args.config else "command-line flags"
    config = DynamicsConfig.parse(raw, source)
    folder = args.mnist_dir if args.mnist_dir is not None else mnist_dir
    return config, None if folder is None else Path(folder)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the four groups epoch by epoch; print the table.

    Returns:
        0 on success.

    """
    config, mnist_dir = _settings(args)
    log = (lambda *parts: None) if args.quiet else progress
    print(
        run_dynamics(
            config,
            mnist_dir,
            args.out,
            device=args.device,
            threads=args.threads,
            config_file=args.config,
            log=log,
        ),
        flush=True,
    )
    return 0
