"""``sublim-theory numbers``: a tiny LM passes a hidden trait to its student through numbers.

``--seeds N --out DIR`` runs seeds ``first_seed .. first_seed+N-1`` (THEORY.md sections 5 and
7; see ``sublim_theory.numbers.experiment``) and writes ``results.csv`` (tidy rows),
``summary.csv`` (mean and 95% interval), ``steps.csv`` (per-step cosines),
``entanglement.csv``, ``table.md``, ``numbers.png`` and ``environment.json``. ``--merge DIR ...``
combines the CSVs of runs made in parallel (disjoint seeds) and writes the same reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sublim_theory.errors import InputError
from sublim_theory.records import environment_record

HELP = "tiny-LM subliminal learning through number sequences (pretrain, teacher, students, table)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="TOML config (default: the built-in defaults, identical to "
        "experiments/configs/numbers_default.toml)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--cache", default=None, help="base-model cache directory (default: OUT/cache)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="do not train: combine the CSVs of earlier runs (disjoint seeds) into OUT",
    )


def _log(*parts: object, file=None) -> None:
    # sys.stdout is looked up at call time: a default bound at import would keep a stream that
    # a caller (pytest's capture, a notebook) may have replaced and closed since.
    print(*parts, file=file or sys.stdout, flush=True)


def write_reports(out: Path, rows: list, entangled: list, steps: list) -> str:
    """Write every CSV, the markdown table and the figure; return the table."""
    from sublim_theory.numbers import report

    report.write_csv(out / "results.csv", rows)
    report.write_csv(out / "entanglement.csv", entangled)
    report.write_csv(out / "steps.csv", steps)
    report.write_csv(out / "summary.csv", report.summarize(rows))
    table = report.format_table(rows)
    (out / "table.md").write_text(table + "\n\n" + report.format_entanglement(entangled) + "\n")
    report.plot(rows, out / "numbers.png")
    return table


def _merge(directories: list[str], out: Path) -> int:
    import csv

    from sublim_theory.numbers import report

    rows, entangled, steps, seen = [], [], [], set()
    for directory in map(Path, directories):
        results = directory / "results.csv"
        if not results.is_file():
            raise InputError(f"'{results}' does not exist; --merge takes output dirs of runs")
        part = report.read_csv(results)
        seeds = {r["seed"] for r in part}
        if seeds & seen:
            raise InputError(f"seed(s) {sorted(seeds & seen)} appear in more than one merged run")
        seen |= seeds
        rows += part
        for name, target in (("entanglement.csv", entangled), ("steps.csv", steps)):
            if (directory / name).is_file():
                with open(directory / name, newline="") as handle:
                    target += list(csv.DictReader(handle))
    _log(write_reports(out, rows, entangled, steps))
    _log(f"merged {len(directories)} runs, seeds {sorted(seen)}, into {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from sublim_theory.numbers import experiment
    from sublim_theory.numbers.config import load_config

    if args.seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = None if args.merge else load_config(args.config)  # bad config: fail before writing
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create output directory '{out}' ({error})") from error
    if args.merge:
        return _merge(args.merge, out)
    cache = Path(args.cache) if args.cache else out / "cache"
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    environment = environment_record(
        "cpu", config=config.to_dict(), config_file=args.config, seeds=seeds
    )
    (out / "environment.json").write_text(json.dumps(environment, indent=2, default=list))

    rows, entangled, steps = [], [], []
    for seed in seeds:
        t0 = time.perf_counter()
        seed_rows, seed_entangled, seed_steps = experiment.run_seed(config, seed, cache, _log)
        rows += seed_rows
        entangled += seed_entangled
        steps += seed_steps
        p = {
            (r["condition"], r["metric"]): r["value"] for r in seed_rows if r["metric"] == "p_trait"
        }
        _log(
            f"seed {seed}: {time.perf_counter() - t0:.0f}s  base {p['base', 'p_trait']:.3f}  "
            f"teacher {p['teacher', 'p_trait']:.3f}  student {p['student', 'p_trait']:.3f}  "
            f"control {p['control', 'p_trait']:.3f}  soft {p['soft', 'p_trait']:.3f}  "
            f"cross {p['cross_student', 'p_trait']:.3f} vs {p['cross_control', 'p_trait']:.3f}"
        )
        # written after every seed, so an interrupted run keeps what it finished
        table = write_reports(out, rows, entangled, steps)
    _log(table)
    _log(
        f"wrote {out}/results.csv, summary.csv, steps.csv, entanglement.csv, table.md, numbers.png"
    )
    return 0
