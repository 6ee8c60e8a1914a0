"""The ``sublim-theory`` command line: one subcommand per module in ``sublim_theory.commands``.

Each command module defines ``HELP`` (one line), ``register(parser)`` and ``run(args) -> int``.
Bad input (``InputError``, a missing file) is printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sublim_theory.errors import InputError

# Subcommand name -> module under sublim_theory.commands (imported only when present).
COMMANDS = ("check", "derive", "sweep", "plot", "mnist", "numbers", "bench", "demo")


def _command_modules() -> dict[str, object]:
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"sublim_theory.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"sublim_theory.commands.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sublim-theory",
        description="Verify the subliminal-learning alignment theorem (Cloud et al. 2025).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _command_modules().items():
        # argparse %-formats help strings (not descriptions): a literal "95%" must be escaped.
        sub = subparsers.add_parser(
            name, help=module.HELP.replace("%", "%%"), description=module.HELP
        )
        module.register(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (InputError, FileNotFoundError) as error:
        print(f"sublim-theory {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
