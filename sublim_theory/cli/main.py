"""The ``sublim-theory`` command line: one subcommand per module in ``sublim_theory.cli``.

Each command module defines ``HELP`` (one line), ``register(parser)`` and ``run(args) -> int``.
Failures the user can fix become one line on stderr: a bad flag (argparse, exit 2), bad input
(``InputError``) or a file that cannot be read or written (``OSError`` naming a file), both
exit 2; Ctrl-C prints one line and exits 130. Anything else is a bug and keeps its traceback.

The shared flags mean the same in every command that takes them: ``--out DIR`` (the output
folder), ``--config FILE`` (a TOML file), ``--device {auto,cpu,cuda}``, ``--seed S`` (the first
or master seed) and ``--seeds N`` (how many seeds). Their argument types live here.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR, config_file

__all__ = [
    "COMMANDS",
    "DEVICE_CHOICES",
    "add_config_argument",
    "add_device_argument",
    "add_numbers_study_arguments",
    "add_study_arguments",
    "build_parser",
    "finite_float",
    "main",
    "nonnegative_int",
    "positive_int",
    "run_declared_study",
    "run_numbers_study",
    "run_seeded_study",
    "thread_count",
]

# Subcommand names; a command's module under sublim_theory.cli is its name with '-' as '_'
# (imported only when present).
COMMANDS = (
    "check",
    "derive",
    "sweep",
    "plot",
    "mnist",
    "numbers",
    "screen",
    "bench",
    "demo",
    "rules",
    "defenses",
    "divergence",
    "dynamics",
    "finetune",
    "real",
    "realcheck",
    "screendata",
    "projection",
    "realscreen",
    "adamstate",
    "coverage",
    "realgrid",
    "sign-population",
    "realcross",
)
DEVICE_CHOICES = ("auto", "cpu", "cuda")
EXIT_INPUT, EXIT_INTERRUPTED = 2, 130  # 130 = 128 + SIGINT, the shell's convention


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--models``, ``--seeds``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (counts where 0 means "skip", seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite float (nan and inf refused: they only make NaN columns)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def thread_count(text: str) -> int:
    """An argparse type: torch CPU threads, 1 .. the CPU count (more threads only oversubscribe)."""
    value = positive_int(text)
    limit = os.cpu_count() or 1
    if value > limit:
        raise argparse.ArgumentTypeError(
            f"expected 1 to {limit} threads (this machine's CPU count), got {value}"
        )
    return value


def add_config_argument(
    parser: argparse.ArgumentParser,
    default: Path | None = None,
    required: bool = False,
    aliases: Sequence[str] = (),
) -> None:
    """``--config FILE``: a TOML path or the name of a packaged config (``runs.config_file``)."""
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
    parser.add_argument(
        "--config",
        *aliases,
        dest="config",
        type=_config_file,
        default=default,
        required=required,
        metavar="FILE",
        help=f"TOML config: a path, or a packaged name ({names})"
        + (f"; default {default.stem}" if default is not None else ""),
    )


def _config_file(text: str) -> Path:
    try:
        return config_file(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device {auto,cpu,cuda}``, resolved (and refused when absent) by ``runs.resolve_device``."""
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default=default,
        help=f"auto (cuda when available), cpu or cuda (default {default})",
    )


def add_study_arguments(
    parser: argparse.ArgumentParser,
    seeds: int,
    cache_help: str = "base-model cache (default: OUT/cache)",
) -> None:
    """The flags of every seeded study, with one meaning everywhere.

    ``--seeds N``, ``--seed S`` (the first seed; alias ``--first-seed``), ``--out DIR``,
    ``--cache DIR``, ``--threads T`` and ``--device``.
    """
    parser.add_argument("--seeds", type=positive_int, default=seeds, help="number of seeds")
    parser.add_argument(
        "--seed", "--first-seed", dest="seed", type=nonnegative_int, default=0, help="first seed"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
    parser.add_argument("--cache", type=Path, default=None, help=cache_help)
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    add_device_argument(parser)


def run_seeded_study(
    build: Callable[[Path | None, int, int], Any],
    args: argparse.Namespace,
    cache_in_out: bool = True,
    wrote: str | None = None,
) -> int:
    """Run a seeded study from the flags of :func:`add_study_arguments`; print its tables.

    ``build(config, first_seed, seeds)`` declares the study (``harness.study.Study``);
    :func:`run_declared_study` runs the seeds not yet stored in ``--out``.

    Args:
        build: the study's factory.
        args: the parsed flags (``config``, ``seed``, ``seeds``, ``out``, ``cache``, ``device``,
            ``threads``).
        cache_in_out: without ``--cache``, cache in ``OUT/cache`` (False: no cache).
        wrote: the files the reports wrote, named on stderr after the run (None: no line).

    Returns:
        0.

    """
    study = build(args.config, args.seed, args.seeds)
    return run_declared_study(study, args, cache_in_out, wrote)


def add_numbers_study_arguments(parser: argparse.ArgumentParser, config: str, reads: str) -> None:
    """The flags of a seeded real-model study on a ``sublim-theory real`` folder.

    ``--config`` (default: the packaged ``config``), ``--numbers DIR`` and the flags of
    :func:`add_study_arguments` (3 seeds, no cache unless ``--cache``).

    Args:
        parser: the command's parser.
        config: the packaged config's name (``configs/NAME.toml``).
        reads: what the study reads from the numbers folder, for ``--numbers``' help.

    """
    add_config_argument(parser, default=CONFIG_DIR / f"{config}.toml")
    parser.add_argument(
        "--numbers",
        type=Path,
        required=True,
        help=f"the --out folder of `sublim-theory real` ({reads})",
    )
    add_study_arguments(parser, seeds=3, cache_help="dequantized-weights cache (default: none)")


def run_numbers_study(
    build: Callable[[Path | None, Path, int, int], Any], args: argparse.Namespace
) -> int:
    """Run a study declared by ``build(config, numbers, first_seed, seeds)``; print its tables.

    Args:
        build: the study's factory, taking the numbers folder after the config.
        args: the flags of :func:`add_numbers_study_arguments`.

    Returns:
        0.

    """

    def declared(config: Path | None, first_seed: int, seeds: int) -> Any:
        return build(config, args.numbers, first_seed, seeds)

    return run_seeded_study(declared, args, cache_in_out=False)


def run_declared_study(
    study: Any, args: argparse.Namespace, cache_in_out: bool = True, wrote: str | None = None
) -> int:
    """Run ``study`` (a ``harness.study.Study``) into ``--out``; print its tables.

    Args:
        study: the declared study.
        args: the parsed flags (``config``, ``out``, ``cache``, ``device``, ``threads`` and,
            where the command has it, ``report_only``).
        cache_in_out: without ``--cache``, cache in ``OUT/cache`` (False: no cache).
        wrote: the files the reports wrote, named on stderr after the run (None: no line).

    Returns:
        0.

    """
    from sublim_theory.harness.study import progress, run_study

    default = args.out / "cache" if cache_in_out else None
    table = run_study(
        study,
        args.out,
        cache=args.cache or default,
        device=args.device,
        threads=args.threads,
        config_file=args.config,
        report_only=getattr(args, "report_only", False),
    )
    print(table, flush=True)
    if wrote is not None:
        progress(f"wrote {args.out}: {wrote}")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (and still exit 2).

    argparse prints the whole usage block before the error; the command's ``--help`` has it,
    so the error itself names the command and what was wrong, nothing more.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {' '.join(message.split())}\n")


def _command_modules() -> dict[str, object]:
    modules = {}
    for name in COMMANDS:
        module = name.replace("-", "_")  # sign-population: cli/sign_population.py
        try:
            modules[name] = importlib.import_module(f"sublim_theory.cli.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"sublim_theory.cli.{module}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command module."""
    parser = _OneLineParser(
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


def _one_line(error: BaseException) -> str:
    """The message of a user-caused error on one line (an OSError names its file)."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or error}: '{error.filename}'"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (2: bad input, 130: interrupted).

    Returns:
        0 on success, the command's own status, 2 for bad input or an unusable file, 130 after
        Ctrl-C.

    Raises:
        OSError: one that names no file: an internal failure, raised with its traceback.

    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # a flag error (its one line is printed already) or --help
        return int(stop.code or 0)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        # A finished seed or model is already on disk; rerunning the same command resumes.
        print(f"sublim-theory {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as error:
        print(f"sublim-theory {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as error:
        # Only file errors that name their file are the user's (a path, a permission, a full
        # disk); an OSError without a file name is an internal failure and keeps its traceback.
        if error.filename is None:
            raise
        print(f"sublim-theory {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
