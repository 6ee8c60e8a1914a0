"""``sublim-theory realcheck``: the one-step alignment report on a real pretrained chat LM."""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import finite_float, nonnegative_int, positive_int, thread_count
from sublim_theory.harness.runs import atomic_write_json, dtype_from_name
from sublim_theory.studies.check import format_table
from sublim_theory.studies.real_check import TEACHER_METHODS, real_check

__all__ = ["HELP", "register", "run"]

HELP = "alignment report (A, B, cosines, eps*) on SmolLM2-135M-Instruct: full or LoRA, float32/64"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``realcheck`` flags to ``parser``."""
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="a packaged name (smollm2-135m-instruct, gemma3-270m), a .gguf file or a local "
        "transformers directory",
    )
    parser.add_argument("--animal", default="owl", help="the trait's answer word")
    parser.add_argument("--teacher", choices=TEACHER_METHODS, default="adam")
    parser.add_argument("--teacher-steps", type=positive_int, default=3)
    parser.add_argument("--teacher-lr", type=finite_float, default=1e-5)
    parser.add_argument("--eps", type=finite_float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--lora-rank", type=positive_int, default=None, help="LoRA (default: full)")
    parser.add_argument("--sequences", type=positive_int, default=4, help="number documents")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="dequantized-weights cache")
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")


def run(args: argparse.Namespace) -> int:
    """Load the model, build the teacher, print one report row per eps.

    Returns:
        0.

    """
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = real_check(
        args.model,
        animal=args.animal,
        teacher=args.teacher,
        teacher_steps=args.teacher_steps,
        teacher_lr=args.teacher_lr,
        eps=args.eps,
        lora_rank=args.lora_rank,
        sequences=args.sequences,
        dtype=dtype_from_name(args.dtype),
        seed=args.seed,
        cache_dir=None if args.cache is None else str(args.cache),
    )
    setup = result["setup"]
    print(", ".join(f"{k} = {v}" for k, v in setup.items() if k != "example_document"))
    rows = [
        {**row, "arch": setup["parameters"], "loss": f"{row['loss']}, eps {row['eps']:g}"}
        for row in result["rows"]
    ]
    print(format_table(rows))
    if args.json is not None:
        atomic_write_json(args.json, result)
    return 0
