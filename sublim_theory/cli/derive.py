"""``sublim-theory derive``: export the machine-checked derivation of the theorem (LaTeX, Markdown)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import OutputFolder
from sublim_theory.symbolic import DerivationStepError, compile_pdf, export_documents

__all__ = [
    "HELP",
    "register",
    "run",
]

HELP = (
    "write the sympy-checked derivations (the alignment theorem; beyond plain gradient descent) "
    "as LaTeX and Markdown"
)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``derive`` flags to ``parser``."""
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for the .tex and .md files",
    )
    parser.add_argument(
        "--pdf", action="store_true", help="also compile the .tex with pdflatex (must be installed)"
    )


def run(args: argparse.Namespace) -> int:
    """Export the derivation (and the PDF with ``--pdf``); pdflatex is looked for first.

    Returns:
        0 on success, 1 if a derivation step does not check (a bug, not bad input).

    Raises:
        InputError: if ``--pdf`` is given and pdflatex is not installed, or ``--out`` cannot be
            written, before any step is checked.

    """
    if args.pdf and shutil.which("pdflatex") is None:
        raise InputError(
            "--pdf needs pdflatex, which is not installed (texlive-latex-base); drop --pdf to "
            "write the .tex and .md only"
        )
    with OutputFolder(args.out, "derive") as folder:
        start = time.perf_counter()
        try:
            written = export_documents(folder.path)
        except DerivationStepError as error:
            # A step that does not check is a bug in the derivations, not bad input: say which.
            print(f"sublim-theory derive: {error}", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - start
        if args.pdf:
            written += [compile_pdf(path) for path in written if path.suffix == ".tex"]
    for path in written:
        print(path)
    print(f"every step checked by sympy in {elapsed:.1f} s", file=sys.stderr)
    return 0
