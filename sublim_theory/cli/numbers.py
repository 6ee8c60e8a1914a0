"""``sublim-theory numbers``: a tiny LM passes a hidden trait to its student through numbers.

``--seeds N --seed S --out DIR`` runs seeds ``S .. S+N-1`` (the main experiment of Cloud et al.
2025, arXiv 2507.14805, in miniature; see ``sublim_theory.studies.numbers.experiment``). Each finished seed
is stored at once, atomically, as ``seeds/seed-S.json``; a rerun into the same folder skips the
stored seeds (a killed run resumes where it stopped), refuses different settings (``run.json``) and
rebuilds every report from all stored seeds, so a table never loses a seed. The reports:
``results.csv`` (tidy rows), ``summary.csv`` (mean and 95% interval), ``steps.csv`` (per-step
cosines), ``entanglement.csv``, ``table.md``, ``numbers.png`` and ``environment.json``. ``--merge
DIR ...`` combines the CSVs of runs made in parallel (disjoint seeds) and writes the same reports.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from sublim_theory.cli.main import (
    add_config_argument,
    add_device_argument,
    nonnegative_int,
    positive_int,
    thread_count,
)
from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record, restore_nan
from sublim_theory.harness.runs import (
    OutputFolder,
    atomic_write_json,
    atomic_write_text,
    load_toml,
)
from sublim_theory.harness.study import cpu_device, usable_cache

__all__ = [
    "HELP",
    "SEEDS_FOLDER",
    "finished_seeds",
    "register",
    "run",
    "write_reports",
]

HELP = "tiny-LM subliminal learning through number sequences (pretrain, teacher, students, table)"
SEEDS_FOLDER = "seeds"  # one JSON file per finished seed: the unit a rerun resumes from


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``numbers`` flags to ``parser``."""
    add_config_argument(parser)  # default: the built-in values (= numbers_default)
    parser.add_argument("--seeds", type=positive_int, default=5, help="number of seeds")
    parser.add_argument(
        "--seed", "--first-seed", dest="seed", type=nonnegative_int, default=0, help="first seed"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--cache", type=Path, default=None, help="base-model cache directory (default: OUT/cache)"
    )
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    add_device_argument(parser)
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="do not train: combine the CSVs of earlier runs (disjoint seeds) into OUT",
    )


def _progress(*parts: object, file=None) -> None:
    # sys.stderr is looked up at call time: a default bound at import would keep a stream that
    # a caller (pytest's capture, a notebook) may have replaced and closed since.
    print(*parts, file=sys.stderr, flush=True)


def write_reports(out: Path, rows: list, entangled: list, steps: list) -> str:
    """Write every CSV, the markdown table and the figure (each atomically); return the table."""
    from sublim_theory.studies.numbers import report

    report.write_csv(out / "results.csv", rows)
    report.write_csv(out / "entanglement.csv", entangled)
    report.write_csv(out / "steps.csv", steps)
    report.write_csv(out / "summary.csv", report.summarize(rows))
    table = report.format_table(rows)
    atomic_write_text(
        out / "table.md", table + "\n\n" + report.format_entanglement(entangled) + "\n"
    )
    report.plot(rows, out / "numbers.png")
    return table


def _seeds_in_table(out: Path) -> set[int]:
    """The seeds an existing ``results.csv`` in ``out`` holds (empty when there is none)."""
    from sublim_theory.studies.numbers import report

    path = out / "results.csv"
    if not path.is_file():
        return set()
    try:
        return {row["seed"] for row in report.read_csv(path)}
    except (KeyError, ValueError) as error:
        raise InputError(
            f"'{path}' is not a results table of this command ({error}); use a new --out folder"
        ) from error


def _merge(directories: list[Path], out: Path) -> int:
    from sublim_theory.studies.numbers import report

    rows, entangled, steps, seen = [], [], [], set()
    for directory in directories:
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
    lost = _seeds_in_table(out) - seen
    if lost:
        raise InputError(
            f"'{out / 'results.csv'}' holds seed(s) {sorted(lost)} that the merged runs lack; "
            "merging would drop them: choose another --out"
        )
    print(write_reports(out, rows, entangled, steps), flush=True)
    _progress(f"merged {len(directories)} runs, seeds {sorted(seen)}, into {out}")
    return 0


def finished_seeds(out: Path) -> dict[int, dict[str, list]]:
    """Every seed stored in ``out/seeds``: ``{seed: {"rows", "entanglement", "steps"}}``.

    Raises:
        InputError: if a stored seed file is not one this command wrote.

    """
    import json

    stored = {}
    for path in sorted((out / SEEDS_FOLDER).glob("seed-*.json")):
        try:
            record = json.loads(path.read_text())
            seed = int(record["seed"])
            # JSON objects come back with sorted keys: restore each table's column order
            stored[seed] = {
                key: [
                    {column: restore_nan(row[column]) for column in record["columns"][key]}
                    for row in record[key]
                ]
                for key in _PARTS
            }
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"stored seed file '{path}' is unreadable ({type(error).__name__}: {error}); "
                "delete it to recompute that seed"
            ) from error
    return stored


_PARTS = ("rows", "entanglement", "steps")


def _union(stored: dict[int, dict[str, list]]) -> tuple[list, list, list]:
    """The rows, entanglement rows and step rows of every stored seed, in seed order."""
    parts: tuple[list, list, list] = ([], [], [])
    for seed in sorted(stored):
        for target, key in zip(parts, _PARTS):
            target += stored[seed][key]
    return parts


def run(args: argparse.Namespace) -> int:
    """Validate every argument, then train the seeds not yet stored in ``--out``.

    Returns:
        0 on success.

    Raises:
        InputError: for a bad config, device, cache or output folder, before any training.

    """
    from sublim_theory.studies.numbers import experiment
    from sublim_theory.testbeds.lm.config import from_dict

    # everything the run needs is checked here, before the first base is trained
    config = None
    if not args.merge:
        raw = load_toml(args.config) if args.config is not None else {}
        config = from_dict(raw, source=str(args.config or "defaults"))
    cpu_device("numbers", args.device)
    if args.merge:
        missing = [str(d) for d in args.merge if not (d / "results.csv").is_file()]
        if missing:
            raise InputError(f"--merge: {missing} hold no results.csv; pass output dirs of runs")
    if args.cache is not None and args.cache.exists() and not args.cache.is_dir():
        raise InputError(f"--cache '{args.cache}' is a file; it must be a folder")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with OutputFolder(args.out, "numbers") as folder:
        out = folder.path
        if args.merge:
            return _merge(args.merge, out)
        cache = usable_cache(args.cache if args.cache is not None else out / "cache")
        seeds = list(range(args.seed, args.seed + args.seeds))
        folder.check_settings(config.to_dict(), {"seeds": seeds})
        stored = finished_seeds(out)
        orphans = _seeds_in_table(out) - set(stored)
        if orphans:
            raise InputError(
                f"'{out / 'results.csv'}' holds seed(s) {sorted(orphans)} with no stored seed "
                f"file in {out / SEEDS_FOLDER}; rewriting it would drop them: use a new --out"
            )
        atomic_write_json(
            out / "environment.json",
            environment_record(
                "cpu",
                config=config.to_dict(),
                config_file=None if args.config is None else str(args.config),
                seeds=seeds,
            ),
        )
        (out / SEEDS_FOLDER).mkdir(exist_ok=True)
        for seed in seeds:
            if seed in stored:
                _progress(f"seed {seed}: stored in {out / SEEDS_FOLDER}, skipped")
                continue
            t0 = time.perf_counter()
            rows, entangled, steps = experiment.run_seed(config, seed, cache, _progress)
            atomic_write_json(
                out / SEEDS_FOLDER / f"seed-{seed}.json",
                {
                    "seed": seed,
                    "rows": rows,
                    "entanglement": entangled,
                    "steps": steps,
                    "columns": {
                        key: list(part[0]) if part else []
                        for key, part in zip(_PARTS, (rows, entangled, steps))
                    },
                },
            )
            stored[seed] = {"rows": rows, "entanglement": entangled, "steps": steps}
            p = {r["condition"]: r["value"] for r in rows if r["metric"] == "p_trait"}
            _progress(
                f"seed {seed}: {time.perf_counter() - t0:.0f}s  base {p['base']:.3f}  "
                f"teacher {p['teacher']:.3f}  student {p['student']:.3f}  "
                f"control {p['control']:.3f}  soft {p['soft']:.3f}  "
                f"cross {p['cross_student']:.3f} vs {p['cross_control']:.3f}"
            )
            # the reports are rebuilt after every seed from every stored seed
            write_reports(out, *_union(stored))
        table = write_reports(out, *_union(stored))
    print(table, flush=True)
    _progress(
        f"wrote {out}/results.csv, summary.csv, steps.csv, entanglement.csv, table.md, numbers.png "
        f"({len(stored)} seeds: {sorted(stored)})"
    )
    return 0
