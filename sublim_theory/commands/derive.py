"""``sublim-theory derive``: export the machine-checked derivation of the theorem (LaTeX, Markdown)."""

from __future__ import annotations

import argparse
import sys
import time

from sublim_theory.symbolic import DerivationStepError, compile_pdf, export

HELP = "write the sympy-checked derivation of the theorem as LaTeX and Markdown"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="directory for the .tex and .md files"
    )
    parser.add_argument(
        "--pdf", action="store_true", help="also compile the .tex with pdflatex (must be installed)"
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        written = export(args.out)
    except DerivationStepError as error:
        # A step that does not check is a bug in the derivations, not bad input: say which one.
        print(f"sublim-theory derive: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    if args.pdf:
        written.append(compile_pdf(written[0]))
    for path in written:
        print(path)
    print(f"every step checked by sympy in {elapsed:.1f} s", file=sys.stderr)
    return 0
