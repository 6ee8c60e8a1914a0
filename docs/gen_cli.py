"""The command-line reference, generated from the argparse parser so it cannot drift from it.

``mkdocs build`` calls :func:`cli_markdown` through ``docs/hooks.py`` and serves the result as
``cli.md``; ``python docs/gen_cli.py`` prints the same page. Every subcommand of
``sublim_theory.cli.main.build_parser`` gets its one-line help, its usage line and a table of its
flags (choices, default and help text as argparse itself expands them).
"""

from __future__ import annotations

import argparse
import os
import sys

# argparse wraps usage lines to the terminal width: fix it so the page is the same everywhere.
WIDTH = 100

HEADER = """# Command line

Every command is `sublim-theory COMMAND [flags]`; `sublim-theory COMMAND --help` prints the same
flags as this page, which is generated from the command's own parser when the site is built.

The shared flags mean the same in every command that takes them: `--out DIR` (the output folder),
`--config FILE` (a TOML file, or the name of a packaged config), `--device {auto,cpu,cuda}`,
`--seed S` (the first or master seed) and `--seeds N` (how many seeds). Bad input (unknown
names, eps <= 0, NaN, wrong shapes, BatchNorm in train mode, missing or truncated data files,
corrupt result files, an unreadable output folder) is reported in one line and exits with
status 2; Ctrl-C exits 130. See [Guarantees](guide/guarantees.md) for what every command that
writes promises (one run per folder, atomic files, resume, refusal on changed settings).
"""


# What the flags alone do not say, per command (the studies' pages say the rest).
NOTES = {
    "check": "`--aux K` appends K auxiliary outputs: the teacher trains the 10 regular outputs, "
    "the student imitates only the K auxiliary ones (the paper's setting). KL uses "
    "`--temperature` (default 2, so that it is not a copy of cross-entropy). The report's keys "
    "are listed in [the API guide](guide/api.md#report-keys).",
    "derive": "Writes `alignment_derivation.tex`/`.md` (the theorem) and "
    "`optimizers_derivation.tex`/`.md` (beyond plain gradient descent), and the PDFs with "
    "`--pdf` when pdflatex is installed. Every equality is checked by sympy while the document "
    "is built; a step that does not check stops the export and names the step. The committed "
    "copy is in `theory/generated/` ([the derivation](theory/generated/alignment_derivation.md)); "
    "a test fails when it is stale.",
    "sweep": "One tidy row per configuration x seed x measurement x step in `sweep.csv`, with "
    "`run.json` and `environment.json`; see [Init distance](studies/init_distance.md).",
}


def _cell(text: str) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _expanded_help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's ``%(default)s``-style fields filled in, as ``--help`` shows it."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    fields = dict(vars(action), prog=prog)
    if action.choices is not None:
        fields["choices"] = ", ".join(map(str, action.choices))
    return action.help % fields


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return "{" + ", ".join(map(str, action.choices)) + "}"
    return action.metavar or action.dest.upper()


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return "required" if action.required else ""
    value = action.default
    if hasattr(value, "stem"):  # a packaged config path: its name is what users type
        return f"`{value.stem}`"
    return f"`{value}`"


def _flag_table(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["| flag | value | default | description |", "| --- | --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}`"
        value = _value(action)
        lines.append(
            "| "
            + " | ".join(
                [
                    names,
                    _cell(f"`{value}`" if value else ""),
                    _cell(_default(action)),
                    _cell(_expanded_help(action, parser.prog)),
                ]
            )
            + " |"
        )
    return lines


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown() -> str:
    """The whole command-line reference page as Markdown.

    Returns:
        The page: a table of commands, then per command its help line, usage and flags.

    """
    os.environ["COLUMNS"] = str(WIDTH)
    from sublim_theory.cli.main import build_parser

    parser = build_parser()
    commands = _subparsers(parser)
    lines = [HEADER, "| command | what it does |", "| --- | --- |"]
    for name, sub in commands.items():
        lines.append(f"| [`{name}`](#{name}) | {_cell(sub.description or '')} |")
    for name, sub in commands.items():
        usage = sub.format_usage().removeprefix("usage: ").rstrip()
        lines += [
            "",
            f"## {name}",
            "",
            _cell(sub.description or ""),
            "",
            "```text",
            usage,
            "```",
            "",
            *_flag_table(sub),
        ]
        if name in NOTES:
            lines += ["", NOTES[name]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(cli_markdown())
