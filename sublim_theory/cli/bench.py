"""``sublim-theory bench``: cost of each alignment path as a ratio to one student gradient."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sublim_theory.cli.main import add_device_argument, nonnegative_int, positive_int
from sublim_theory.harness.runs import DTYPES
from sublim_theory.studies.bench.experiment import SIZES
from sublim_theory.studies.bench.screen import SCREEN_TRAITS
from sublim_theory.studies.bench.study import run_bench

__all__ = [
    "HELP",
    "register",
    "run",
]

HELP = "benchmark the alignment paths against one student gradient (and curvlinops, vmap vs loop)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` flags to ``parser``."""
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/cpu"), help="output folder"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    add_device_argument(parser, default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "float64"]
    )
    parser.add_argument(
        "--archs",
        nargs="+",
        choices=["mlp", "cnn", "transformer"],
        default=["mlp", "cnn", "transformer"],
    )
    parser.add_argument(
        "--seeds", type=nonnegative_int, default=32, help="seeds for vmap vs loop (0 skips)"
    )
    parser.add_argument(
        "--mnist-models",
        type=nonnegative_int,
        default=10,
        help="models for the MNIST step benchmark (0 skips)",
    )
    parser.add_argument(
        "--runs",
        type=nonnegative_int,
        default=2,
        help="runs one after the other; a target is met only if met in every run",
    )
    parser.add_argument(
        "--screen-traits",
        nargs="*",
        type=positive_int,
        default=list(SCREEN_TRAITS),
        help="K of the screen rows (one-epoch equivalents, jvp vs factored); no value skips them",
    )
    parser.add_argument(
        "--screen-only",
        action="store_true",
        help="run the screen rows alone (no alignment paths, seeds or MNIST rows)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="run the real-model rows alone (issue 23): engine paths per gradient, training "
        "and generation against plain transformers + peft; writes bench_real.* into --out",
    )
    parser.add_argument(
        "--real-model",
        default="smollm2-135m-instruct",
        help="with --real: a packaged model name, a .gguf file or a transformers directory",
    )
    parser.add_argument(
        "--real-cache",
        type=Path,
        default=None,
        help="with --real: keep the GGUF's dequantized weights here (faster later loads)",
    )
    parser.add_argument(
        "--threads",
        type=nonnegative_int,
        default=0,
        help="torch CPU threads for the run (0: torch's default; 1 is steadier on a busy machine)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks; print the markdown table (stdout) and the files written (stderr).

    Returns:
        0 on success.

    """
    paths, table = run_bench(
        args.out,
        size=args.size,
        device=args.device,
        dtypes=tuple(args.dtypes),
        archs=tuple(args.archs),
        n_seeds=args.seeds,
        mnist_models=args.mnist_models,
        runs=args.runs,
        threads=args.threads,
        screen_traits=tuple(args.screen_traits),
        screen_only=args.screen_only,
        real=args.real,
        real_model=args.real_model,
        real_cache=args.real_cache,
    )
    print(table)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0
