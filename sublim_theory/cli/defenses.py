"""``sublim-theory defenses``: token-level channels and defenses in the tiny LM (issue 13 item 6).

``--config FILE --seeds N --seed S --out DIR`` runs seeds ``S .. S+N-1`` of
``sublim_theory.studies.defenses.experiment`` (divergence-token masking, truncated sampling of teacher and
base, the poisoned-fraction sweep). Each finished seed is stored at once, atomically, as
``seeds/seed-S.json``; a rerun into the same folder skips the stored seeds (a killed run resumes),
refuses other settings (``run.json``) and rebuilds every report from all stored seeds:
``results.csv`` (tidy rows), ``summary.csv`` (mean, 95% interval, n, seeds > 0, with each
defense's paired change vs plain sampling), ``slopes.csv``
(the poisoning curve's per-segment slopes), ``table.md``, ``defenses.png`` and
``environment.json``. Bases come from ``--cache`` (shared with ``numbers``: same key). Progress
goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
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
    CONFIG_DIR,
    OutputFolder,
    atomic_write_json,
    atomic_write_text,
)
from sublim_theory.harness.study import cpu_device, usable_cache

__all__ = ["HELP", "SEEDS_FOLDER", "register", "run", "stored_rows", "write_reports"]

HELP = "tiny-LM defenses: divergence-token masking, top-p / min-prob sampling, poisoned fraction"
SEEDS_FOLDER = "seeds"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``defenses`` flags to ``parser``."""
    add_config_argument(parser, default=CONFIG_DIR / "defenses_default.toml")
    parser.add_argument("--seeds", type=positive_int, default=3, help="number of seeds")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="first seed")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--cache", type=Path, default=None, help="base-model cache directory (default: OUT/cache)"
    )
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    add_device_argument(parser)


def _progress(*parts: object, file=None) -> None:
    print(*parts, file=sys.stderr, flush=True)


def stored_rows(out: Path) -> dict[int, list[dict]]:
    """The tidy rows of every seed stored in ``out/seeds``.

    Raises:
        InputError: if a stored seed file is not one this command wrote.

    """
    stored = {}
    for path in sorted((out / SEEDS_FOLDER).glob("seed-*.json")):
        try:
            record = json.loads(path.read_text())
            stored[int(record["seed"])] = [
                {key: restore_nan(row[key]) for key in ("seed", "condition", "metric", "value")}
                for row in record["rows"]
            ]
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"stored seed file '{path}' is unreadable ({type(error).__name__}: {error}); "
                "delete it to recompute that seed"
            ) from error
    return stored


def write_reports(out: Path, rows: list[dict]) -> str:
    """Write the CSVs, ``table.md`` and ``defenses.png`` (each atomically); return the tables."""
    from sublim_theory.studies.defenses import experiment as defenses
    from sublim_theory.studies.numbers import report

    report.write_csv(out / "results.csv", rows)
    report.write_csv(out / "summary.csv", report.summarize(rows + defenses.defense_changes(rows)))
    report.write_csv(out / "slopes.csv", defenses.segment_slopes(rows))
    table = defenses.format_tables(rows)
    atomic_write_text(out / "table.md", table + "\n")
    defenses.plot(rows, out / "defenses.png")
    return table


def run(args: argparse.Namespace) -> int:
    """Validate every argument, then run the seeds not yet stored in ``--out``.

    Returns:
        0 on success.

    Raises:
        InputError: for a bad config, device, cache or output folder, before any training.

    """
    from sublim_theory.studies.defenses import experiment as defenses

    config, setting = defenses.load_config(args.config)
    cpu_device("defenses", args.device)
    if args.cache is not None and args.cache.exists() and not args.cache.is_dir():
        raise InputError(f"--cache '{args.cache}' is a file; it must be a folder")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with OutputFolder(args.out, "defenses") as folder:
        out = folder.path
        cache = usable_cache(args.cache if args.cache is not None else out / "cache")
        seeds = list(range(args.seed, args.seed + args.seeds))
        settings = {"numbers": config.to_dict(), "defenses": asdict(setting)}
        folder.check_settings(settings, {"seeds": seeds})
        atomic_write_json(
            out / "environment.json",
            environment_record(
                "cpu",
                config=settings,
                config_file=None if args.config is None else str(args.config),
                seeds=seeds,
            ),
        )
        (out / SEEDS_FOLDER).mkdir(exist_ok=True)
        stored = stored_rows(out)
        for seed in seeds:
            if seed in stored:
                _progress(f"seed {seed}: stored in {out / SEEDS_FOLDER}, skipped")
                continue
            t0 = time.perf_counter()
            rows = defenses.run_seed(config, setting, seed, cache, _progress)
            atomic_write_json(
                out / SEEDS_FOLDER / f"seed-{seed}.json", {"seed": seed, "rows": rows}
            )
            stored[seed] = rows
            diff = {r["condition"]: r["value"] for r in rows if r["metric"] == "paired_diff"}
            _progress(
                f"seed {seed}: {time.perf_counter() - t0:.0f}s  diff plain {diff['student_plain']:+.3f}"
                f"  top_p {diff['student_top_p']:+.3f}  min_prob {diff['student_min_prob']:+.3f}"
                f"  masked {diff['student_masked']:+.3f}"
            )
            write_reports(out, [r for s in sorted(stored) for r in stored[s]])
        table = write_reports(out, [r for s in sorted(stored) for r in stored[s]])
    print(table, flush=True)
    _progress(f"wrote {out}/results.csv, summary.csv, slopes.csv, table.md, defenses.png")
    return 0
