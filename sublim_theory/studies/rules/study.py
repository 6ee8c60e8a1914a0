"""The rules sweep as a study: one unit per (job, seed), its rows appended to ``rules.csv``.

:func:`rules_study` declares the units and :func:`sublim_theory.harness.study.run_study` runs
them: the folder is locked, ``run.json`` checked, and each unit's rows are appended with an
end-of-unit marker in one durable write (``CsvAppendStore``). A (job, seed) counts as done only
when its marker is there, so a run killed, cut at a row boundary or stopped by a full disk
drops the incomplete unit and recomputes it (issue 24). ``rules.csv`` files written before the
markers existed get them once (:func:`legacy_units`); their tables rebuild byte-identical.

The table is rebuilt from the stored rows in unit order after every unit; the figure once
every unit is stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import fingerprint
from sublim_theory.harness.store import CsvAppendStore
from sublim_theory.harness.study import Study, progress, run_study
from sublim_theory.studies.rules.experiment import (
    COLUMNS,
    RULES_TABLE,
    RuleSweepConfig,
    expand_rule_jobs,
    format_cells,
    load_rules_config,
    parse_rules_rows,
    run_rule_job_seed,
)
from sublim_theory.studies.rules.report import FIGURE_NAME, write_rules_report

__all__ = ["legacy_units", "rules_study", "run_rules_sweep"]


def _unit(key: str, seed: int | str) -> str:
    return f"{key}|{seed}"


def legacy_units(config: RuleSweepConfig, rows: list[dict[str, str]]) -> list[tuple[str, int]]:
    """Split a ``rules.csv`` without markers into its (job, seed) units (``LegacySplit``).

    A unit is a run of rows with one (key, seed), ``len(teachers) * len(rules)`` long (the old
    code appended each pair in one write). A short last run is an incomplete unit, left out.

    Returns:
        ``(unit, row count)`` per complete unit, in file order.

    Raises:
        InputError: a row whose key was computed under other settings (its fingerprint is the
            key's last part), or a short run of rows before the last.

    """
    expected = len(config.grid.teachers) * len(config.grid.rules)
    stamp = fingerprint(config.settings())
    units, start = [], 0
    while start < len(rows):
        key, seed = rows[start].get("key", ""), rows[start].get("seed", "")
        if not key.endswith("|" + stamp):
            raise InputError(
                f"rules.csv holds rows of key {key!r}, computed under other settings than "
                f"these (fingerprint {stamp}); use another --out"
            )
        count = 0
        while (
            start + count < len(rows)
            and count < expected
            and (rows[start + count].get("key"), rows[start + count].get("seed")) == (key, seed)
        ):
            count += 1
        if count < expected:
            if start + count < len(rows):
                raise InputError(
                    f"rules.csv: ({key}, seed {seed}) has {count} rows, expected {expected}, "
                    "and more rows follow; use another --out"
                )
            break
        units.append((_unit(key, seed), count))
        start += count
    return units


def rules_study(config_path: str | os.PathLike[str]) -> Study:
    """The rules sweep of ``config_path`` as a :class:`Study` (units: (job, seed) pairs).

    Returns:
        The study.

    Raises:
        InputError: a bad config.

    """
    config = load_rules_config(config_path)
    jobs = expand_rule_jobs(config)
    pairs = {_unit(job["key"], seed): (job, seed) for job in jobs for seed in config.grid.seeds}
    grid = {
        "architectures": list(config.grid.architectures),
        "parameterizations": list(config.grid.parameterizations),
        "placements": list(config.grid.placements),
        "teachers": list(config.grid.teachers),
        "rules": list(config.grid.rules),
        "seeds": list(config.grid.seeds),
    }

    def run_unit(unit: str, context: Any) -> list[dict[str, str]]:
        job, seed = pairs[unit]
        return [format_cells(row) for row in run_rule_job_seed(job, seed)]

    def store(records: Path, stamp: str, study: Study, log: Callable[..., None]) -> CsvAppendStore:
        return CsvAppendStore(
            records, COLUMNS, stamp, legacy=lambda rows: legacy_units(config, rows), log=log
        )

    def report(out: Path, rows: list[dict[str, str]]) -> str:
        parsed = parse_rules_rows(
            ((i, [row[c] for c in COLUMNS]) for i, row in enumerate(rows, start=2)),
            str(out / RULES_TABLE),
        )
        complete = len(rows) == len(pairs) * len(config.grid.teachers) * len(config.grid.rules)
        table, figure = write_rules_report(out, parsed, figure=complete)
        lines = [f"rules table: {out / RULES_TABLE}", f"summary: {table}"]
        lines.append(f"figure: {figure}" if figure else f"figure: not yet ({FIGURE_NAME})")
        return "\n".join(lines)

    return Study(
        "rules",
        config.settings(),
        list(pairs),
        run_unit,
        report,
        grid=grid,
        folder=RULES_TABLE,
        store=store,
    )


def run_rules_sweep(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    progress_lines: bool = True,
    threads: int | None = None,
) -> str:
    """Run (or resume) the rules sweep of ``config_path`` into ``out_dir``.

    Returns:
        The report's text (where the table, the summary and the figure are).

    Raises:
        InputError: a bad config, a busy folder, a folder holding other settings, a full disk.

    """
    study = rules_study(config_path)
    log = progress if progress_lines else (lambda *parts: None)
    return run_study(study, out_dir, threads=threads, config_file=config_path, log=log)
