"""``sublim-theory bench``: cost of each alignment path as a ratio to one student gradient."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sublim_theory.cli.main import add_device_argument, nonnegative_int
from sublim_theory.harness.runs import DTYPES
from sublim_theory.studies.bench.experiment import SIZES, run_benchmarks

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
    if args.real:
        from sublim_theory.studies.bench.real import run_real_benchmarks

        paths = run_real_benchmarks(
            args.out,
            args.real_model,
            args.size,
            args.device,
            args.runs,
            args.threads,
            args.real_cache,
        )
        print(paths[2].read_text())
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
        return 0
    paths = run_benchmarks(
        args.out,
        args.size,
        args.device,
        tuple(args.dtypes),
        tuple(args.archs),
        args.seeds,
        args.mnist_models,
        args.runs,
        args.threads,
    )
    print(paths[2].read_text())
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0
