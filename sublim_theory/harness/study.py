"""One study mechanism: what every study does around its computation, written once.

A study declares what it computes (:class:`Study`); :func:`run_study` owns the rest:

1. the device and the cache folder are checked, and torch's CPU threads set, before any compute;
2. the output folder is created, probed and locked (``OutputFolder``);
3. the settings and the grid of units are recorded in ``run.json``; a rerun with other settings,
   or a folder that holds stored units but no ``run.json``, is refused with one line;
4. the environment (machine, packages, git revision) is recorded in ``environment.json``;
5. each unit not yet stored is computed, and its complete record stored atomically with the
   settings fingerprint (``harness.store``); stored units are skipped, so a killed run resumes
   where it stopped and its tables equal an uninterrupted run's;
6. the reports (tables, figures) are rebuilt from all stored units after every unit, so the
   folder is always consistent with what is stored;
7. progress goes to stderr, one line a unit.

The study never sees the folder lock, the store or the settings check; it sees a
:class:`Context` (the output folder, the cache folder, the device and a log function).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record
from sublim_theory.harness.runs import (
    RUN_RECORD_NAME,
    OutputFolder,
    atomic_write_json,
    fingerprint,
    resolve_device,
)
from sublim_theory.harness.store import UnitStore

__all__ = ["Context", "Study", "cpu_device", "progress", "run_study", "usable_cache"]


def progress(*parts: object) -> None:
    """The one progress printer: a line on stderr, flushed at once."""
    print(*parts, file=sys.stderr, flush=True)


def usable_cache(path: Path) -> Path:
    """Create a cache folder and prove it can be written, before any compute.

    Returns:
        ``path``, now an existing writable folder.

    Raises:
        InputError: ``path`` is a file, or the folder cannot be created or written.

    """
    if path.exists() and not path.is_dir():
        raise InputError(f"--cache '{path}' is a file; it must be a folder (created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise InputError(
            f"cannot write the cache in '{path}' ({error.strerror}); pass a writable --cache"
        ) from None
    return path


def cpu_device(command: str, requested: str) -> None:
    """Refuse a non-CPU ``--device`` for the tiny-LM commands (numbers, finetune, defenses).

    Raises:
        InputError: one line naming the command and the device the request resolved to.

    """
    device = resolve_device(requested)
    if device.type != "cpu":
        raise InputError(
            f"{command} trains its tiny LM on the CPU only (--device {requested} resolved to "
            f"{device}); use --device cpu"
        )


@dataclass(frozen=True)
class Context:
    """What a study's unit sees of the run: where to write, what to reuse, where to compute."""

    out: Path
    cache: Path | None
    device: torch.device
    log: Callable[..., None] = progress


@dataclass(frozen=True)
class Study:
    """A study: its name, settings, units, the computation of one unit and its report.

    Attributes:
        name: the command's name, recorded in ``run.json`` (a folder of another study is refused).
        settings: every setting that shapes a row (plain, JSON-able values); fingerprinted.
        units: the unit keys, in the order they are computed (strings or ints).
        run_unit: ``run_unit(unit, context) -> rows`` (a non-empty list of dicts).
        report: ``report(out, rows) -> str`` writes the tables and figures from all stored rows
            (in unit order, as read back from the store: JSON values, NaN stored as null) and
            returns the text to print.
        grid: the values a rerun may extend but not shrink (default: ``{"units": units}``).
        unit_file: the record's file name of a unit (default ``unit-KEY.json``).
        folder: the subfolder of the records (default ``units``).
        summary: ``summary(unit, rows) -> str``, the progress line's tail after a unit.
        cpu_only: refuse a non-CPU device with one line.
        legacy_records: accept stored records without a fingerprint when ``run.json`` matches
            (folders written before records carried one).
        store: ``store(records, fingerprint, log)`` builds the store of the records (anything
            with ``get(unit)`` and ``put(unit, rows)``, e.g. a ``CsvAppendStore`` whose
            ``records`` is a file); default a ``UnitStore`` of one JSON file per unit.

    """

    name: str
    settings: Mapping[str, Any]
    units: Sequence[Any]
    run_unit: Callable[[Any, Context], list[dict]]
    report: Callable[[Path, list[dict]], str]
    grid: Mapping[str, Any] | None = None
    unit_file: Callable[[Any], str] = field(default=lambda unit: f"unit-{unit}.json")
    folder: str = "units"
    summary: Callable[[Any, list[dict]], str] | None = None
    cpu_only: bool = False
    legacy_records: bool = False
    store: Callable[[Path, str, Callable[..., None]], Any] | None = None


def run_study(
    study: Study,
    out: str | Path,
    *,
    cache: str | Path | None = None,
    device: str = "cpu",
    threads: int | None = None,
    config_file: str | Path | None = None,
    log: Callable[..., None] = progress,
) -> str:
    """Run the units of ``study`` not yet stored in ``out``; rebuild and return its report.

    Args:
        study: what to compute.
        out: the output folder (created; locked for the run).
        cache: a cache folder shared between runs (default: none); probed before any compute.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads (default: torch's choice).
        config_file: the config file the settings came from, for the environment record.
        log: the progress printer.

    Returns:
        The report's text (the tables), also written under ``out``.

    Raises:
        InputError: a bad device, cache or folder, settings that differ from the folder's, or a
            stored record that cannot be trusted; all before any compute on the unit concerned.

    """
    resolved = resolve_device(device)
    if study.cpu_only and resolved.type != "cpu":
        raise InputError(
            f"{study.name} runs on the CPU only (--device {device} resolved to {resolved}); "
            "use --device cpu"
        )
    cache_path = None if cache is None else usable_cache(Path(cache))
    if threads is not None:
        torch.set_num_threads(threads)
    units = list(study.units)
    if len(set(map(str, units))) != len(units):
        raise InputError(f"{study.name}: the units repeat a key ({units}); fix the config")
    with OutputFolder(out, study.name) as folder:
        path = folder.path
        records = path / study.folder
        if not (path / RUN_RECORD_NAME).exists() and _holds_records(records):
            raise InputError(
                f"'{path}' holds stored units but no {RUN_RECORD_NAME}, so their settings are "
                f"unknown; use a new --out (or delete '{records}' to start over)"
            )
        grid = {"units": units} if study.grid is None else study.grid
        folder.check_settings(study.settings, grid)
        atomic_write_json(
            path / "environment.json",
            environment_record(
                str(resolved),
                config=dict(study.settings),
                config_file=None if config_file is None else str(config_file),
                units=units,
            ),
        )
        if study.store is None:
            store = UnitStore(
                records, fingerprint(study.settings), study.unit_file, legacy=study.legacy_records
            )
        else:
            store = study.store(records, fingerprint(study.settings), log)
        context = Context(path, cache_path, resolved, log)
        stored = {str(u): store.get(u) for u in units}
        for unit in units:
            if stored[str(unit)] is not None:
                log(f"{study.name} {unit}: stored in {records}, skipped")
                continue
            started = time.perf_counter()
            rows = study.run_unit(unit, context)
            store.put(unit, rows)
            # the report always reads the stored form, so a resumed run's tables equal these
            stored[str(unit)] = store.get(unit)
            tail = "" if study.summary is None else "  " + study.summary(unit, rows)
            log(f"{study.name} {unit}: {time.perf_counter() - started:.0f}s{tail}")
            study.report(path, _done_rows(units, stored))
        return study.report(path, _done_rows(units, stored))


def _holds_records(records: Path) -> bool:
    """A non-empty folder of unit records, or a non-empty file of them (a CSV store)."""
    if records.is_dir():
        return any(records.iterdir())
    return records.is_file() and records.stat().st_size > 0


def _done_rows(units: Sequence[Any], stored: Mapping[str, list[dict] | None]) -> list[dict]:
    return [row for unit in units for row in (stored[str(unit)] or [])]
