"""``sublim-theory bench``: cost of each alignment path as a ratio to one student gradient."""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.bench import SIZES, run_benchmarks

HELP = "benchmark the alignment paths against one student gradient (and curvlinops, vmap vs loop)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", choices=["float32", "float64"], default=["float32", "float64"]
    )
    parser.add_argument(
        "--archs",
        nargs="+",
        choices=["mlp", "cnn", "transformer"],
        default=["mlp", "cnn", "transformer"],
    )
    parser.add_argument("--seeds", type=int, default=32, help="seeds for vmap vs loop (0 skips)")
    parser.add_argument(
        "--mnist-models", type=int, default=10, help="models for the MNIST step benchmark (0 skips)"
    )


def run(args: argparse.Namespace) -> int:
    paths = run_benchmarks(
        args.out,
        args.size,
        args.device,
        tuple(args.dtypes),
        tuple(args.archs),
        args.seeds,
        args.mnist_models,
    )
    print(paths[2].read_text())
    for path in paths:
        print(f"wrote {path}")
    return 0
