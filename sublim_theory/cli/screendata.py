"""``sublim-theory screendata``: screen your own JSONL data for candidate traits before training."""

from __future__ import annotations

import argparse
from pathlib import Path

from sublim_theory.cli.main import nonnegative_int, positive_int, thread_count

__all__ = ["HELP", "register", "run"]

HELP = "screen your JSONL data for candidate traits: per-trait push, z and p against a null (CSV)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``screendata`` flags to ``parser``."""
    add = parser.add_argument
    add("--data", type=Path, required=True, help='JSONL: {"prompt": ..., "completion": ...}')
    add("--model", required=True, help="packaged name, .gguf file or transformers directory")
    add("--traits", type=Path, required=True, help="TOML: [[trait]] name, answer, questions")
    add("--null", type=Path, default=None, help="JSONL: your base's own completions (p-values)")
    add("--variant", choices=("sgd", "sign", "rms"), default="sgd", help="the student's step")
    add("--method", choices=("factored", "jvp"), default="factored", help="same pushes, cost")
    add("--out", type=Path, required=True, help="output folder")
    add("--threads", type=thread_count, default=None, help="torch CPU threads")
    add("--batch-size", type=positive_int, default=8, help="documents per jvp chunk")
    add("--max-tokens", type=positive_int, default=512, help="most tokens per document")
    add("--student-batch", type=positive_int, default=8, help="rms: the student's batch size")
    add("--dtype", choices=("float32", "float64"), default="float32")
    add("--bootstrap", type=positive_int, default=1000, help="resamples for the intervals")
    add("--permutations", type=positive_int, default=1000, help="for the data-set p-value")
    add("--seed", type=nonnegative_int, default=0)


def run(args: argparse.Namespace) -> int:
    """Read the inputs (before the model, so bad input fails fast), screen, write, print.

    Returns:
        0.

    """
    import torch
    from transformers.utils.logging import disable_progress_bar

    from sublim_theory.harness.runs import dtype_from_name
    from sublim_theory.models.pretrained import load_pretrained
    from sublim_theory.studies import screen_data as sd

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    documents = sd.read_documents(args.data)
    null = None if args.null is None else sd.read_documents(args.null, "null file")
    traits = sd.read_traits(args.traits)
    disable_progress_bar()  # stderr is for errors: one line each
    pretrained = load_pretrained(args.model, dtype=dtype_from_name(args.dtype))
    result = sd.screen_data(
        pretrained, documents, traits, null, variant=args.variant, method=args.method,
        batch_size=args.batch_size, max_tokens=args.max_tokens, student_batch=args.student_batch,
        bootstrap=args.bootstrap, permutations=args.permutations, seed=args.seed,
        sources=(str(args.data), str(args.null)),
    )  # fmt: skip
    sd.write_outputs(result, args.out)
    print(sd.format_table(result), end="")
    print(f"wrote {args.out}/ranked.csv, attributions.csv, table.md, summary.json")
    return 0
