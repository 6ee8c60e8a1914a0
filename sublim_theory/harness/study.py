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
:class:`Context` (the output folder, the cache folder, the device and a log function). Optional
hooks: ``prepare`` (per-study files written once before the units, e.g. finetune's learning-rate
selection), ``state_files`` (those files: refused without ``run.json`` like stored units),
``store`` (a record layout with extra lists of rows, :class:`PartsStore`) and ``report_key``
(the order in which the units' rows reach the report).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record, restore_nan
from sublim_theory.harness.runs import (
    RUN_RECORD_NAME,
    OutputFolder,
    atomic_write_json,
    fingerprint,
    resolve_device,
)
from sublim_theory.harness.store import UnitStore

__all__ = [
    "MAX_SEED",
    "MAX_SEEDS",
    "PART",
    "Context",
    "PartsStore",
    "Study",
    "cpu_device",
    "parts_store",
    "progress",
    "run_study",
    "seed_range",
    "seed_study",
    "split_parts",
    "usable_cache",
]

MAX_SEEDS = 10_000  # seeds in one run: far beyond any study, far below a list that fills memory
MAX_SEED = 2**31  # first seed + count; offsets of up to 2**30 keep every stream below 2**32
PART = "_part"  # the key that tags a row of a record's extra part (see PartsStore)


def progress(*parts: object) -> None:
    """The one progress printer: a line on stderr, flushed at once."""
    print(*parts, file=sys.stderr, flush=True)


def usable_cache(path: Path, need_bytes: int = 0) -> Path:
    """Create a cache folder and prove it can be written, before any compute.

    The probe writes one byte and syncs it (a full disk or a read-only folder fails here, not
    after pretraining), and the folder must have ``need_bytes`` free (one cached model).

    Returns:
        ``path``, now an existing writable folder.

    Raises:
        InputError: ``path`` is a file, the folder cannot be created or written, or it has
            less than ``need_bytes`` free.

    """
    if path.exists() and not path.is_dir():
        raise InputError(f"--cache '{path}' is a file; it must be a folder (created if missing)")
    probe = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".probe.", dir=path)
        try:
            os.write(descriptor, b"\0")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        free = shutil.disk_usage(path).free
    except OSError as error:
        raise InputError(
            f"cannot write the cache in '{path}' ({error.strerror or type(error).__name__}); "
            "free space there or pass a writable --cache"
        ) from None
    finally:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)
    if free < need_bytes:
        raise InputError(
            f"the cache '{path}' has {free} bytes free, a cached model needs {need_bytes}; "
            "free space there or pass another --cache"
        )
    return path


def seed_range(first: int, count: int) -> list[int]:
    """The seeds ``first .. first + count - 1`` of ``--seed first --seeds count``, bounded.

    Returns:
        The seeds, ascending.

    Raises:
        InputError: ``count`` outside 1 .. MAX_SEEDS, ``first`` negative, or the last seed at or
            above MAX_SEED.

    """
    if not 1 <= count <= MAX_SEEDS:
        raise InputError(f"--seeds must be between 1 and {MAX_SEEDS}, got {count}")
    if first < 0 or first + count > MAX_SEED:
        raise InputError(
            f"--seed must be >= 0 with --seed + --seeds <= {MAX_SEED}, got {first} + {count}"
        )
    return list(range(first, first + count))


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
    """What a study's unit sees of the run: where to write, what to reuse, where to compute.

    Attributes:
        out: the output folder.
        cache: the cache folder, or None.
        device: where to compute.
        log: the progress printer.
        report_only: the run rebuilds the report from stored units and computes nothing; a
            ``prepare`` hook then only reads or checks what is stored (or refuses the folder).

    """

    out: Path
    cache: Path | None
    device: torch.device
    log: Callable[..., None] = progress
    report_only: bool = False


class PartsStore(UnitStore):
    """A :class:`UnitStore` whose records hold extra lists of rows beside ``rows``.

    Some units produce more than one table (numbers: its rows, the entanglement rows and the
    per-step cosines). ``run_unit`` returns them as ONE list: the main rows, and each row of part
    ``p`` tagged ``{PART: p}``. The record stores the main rows as ``rows`` and each part,
    untagged, under its own name (plus ``key_name: unit``, e.g. ``"seed": 3``): the layout the
    tiny-LM commands wrote before records carried a fingerprint, so their folders still resume.
    :meth:`get` returns the same tagged list.

    Args:
        folder: where the records live (as :class:`UnitStore`).
        fingerprint: the settings fingerprint every record carries (as :class:`UnitStore`).
        file_name: the record's file name for a unit key (as :class:`UnitStore`).
        legacy: accept records without a fingerprint (as :class:`UnitStore`).
        parts: the names of the extra lists; each must be present in a stored record.
        key_name: also store the unit key under this name (``None``: not).

    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        fingerprint: str,
        file_name: Callable[[Any], str] = lambda unit: f"unit-{unit}.json",
        legacy: bool = False,
        *,
        parts: Sequence[str] = (),
        key_name: str | None = None,
    ) -> None:
        """A :class:`UnitStore` whose records also hold the lists ``parts``."""
        super().__init__(folder, fingerprint, file_name, legacy)
        self.parts = tuple(parts)
        self.key_name = key_name

    def get(self, unit: Any) -> list[dict] | None:
        """The stored rows of ``unit``, its parts' rows tagged, or None when not stored.

        Returns:
            The rows, or None.

        Raises:
            InputError: as :meth:`UnitStore.get`, or a part that is missing or not a list of rows.

        """
        rows = super().get(unit)
        if rows is None:
            return None
        path = self.path(unit)
        record = json.loads(path.read_text())  # readable: UnitStore.get has just parsed it
        tagged = list(rows)
        for part in self.parts:
            values = record.get(part)
            if not isinstance(values, list) or not all(isinstance(r, dict) for r in values):
                raise InputError(
                    f"stored unit '{path}' has no list of '{part}' rows; "
                    f"delete '{path}' to recompute that unit"
                )
            tagged += [{**row, PART: part} for row in values]
        return tagged

    def put(self, unit: Any, rows: Sequence[Mapping[str, Any]], **extra: Any) -> None:
        """Store the main rows and each tagged part of a finished unit, atomically.

        Raises:
            ValueError: no main rows, or a row tagged with an unknown part.

        """
        lists: dict[str, list[dict]] = {part: [] for part in self.parts}
        main = []
        for row in rows:
            if PART not in row:
                main.append(dict(row))
            elif row[PART] in lists:
                lists[row[PART]].append({k: v for k, v in row.items() if k != PART})
            else:
                raise ValueError(f"unit {unit!r}: a row of unknown part {row[PART]!r}")
        key = {} if self.key_name is None else {self.key_name: unit}
        super().put(unit, main, **key, **lists, **extra)


def split_parts(rows: Sequence[Mapping[str, Any]], parts: Sequence[str]) -> list[list[dict]]:
    """Undo :class:`PartsStore`'s tags: ``[main rows, rows of parts[0], rows of parts[1], ...]``.

    Stored nulls become NaN again (``records.restore_nan``); the tag key is dropped.

    Returns:
        The main rows, then each part's rows.

    Raises:
        ValueError: a row tagged with a part not in ``parts``.

    """
    split: dict[str | None, list[dict]] = {None: [], **{part: [] for part in parts}}
    for row in rows:
        part = row.get(PART)
        if part not in split:
            raise ValueError(f"a row of unknown part {part!r}")
        split[part].append({k: restore_nan(v) for k, v in row.items() if k != PART})
    return list(split.values())


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
        prepare: ``prepare(context, stored)``, called once the settings are checked and before
            any unit (``stored``: unit key as text -> its stored rows or None). It writes the
            study's own files (say, a selection made once for every unit) and may refuse the
            folder with an ``InputError``. Under ``report_only`` (``context.report_only``) it
            computes nothing: it reads its files or refuses a folder that lacks them.
        state_files: the study's own files in the folder (those ``prepare`` writes, or tables
            holding rows no record has): like stored units, refused when ``run.json`` is missing.
        store: ``store(records, fingerprint, study, log)`` builds the store of the records:
            anything with ``get(unit)`` and ``put(unit, rows)``. Default: a :class:`UnitStore`
            of one JSON file per unit; :func:`parts_store` for units with several tables; a
            ``CsvAppendStore`` (``records`` is then a file) where a table must rebuild
            byte-identical from one file.
        report_key: the sort key of the units whose rows the report reads (default: unit order).
        cache_bytes: the free space the cache must have before any compute (one cached model).

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
    prepare: Callable[[Context, Mapping[str, list[dict] | None]], None] | None = None
    state_files: tuple[str, ...] = ()
    store: Callable[[Path, str, Study, Callable[..., None]], Any] | None = None
    report_key: Callable[[Any], Any] | None = None
    cache_bytes: int = 0


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def run_study(
    study: Study,
    out: str | Path,
    *,
    cache: str | Path | None = None,
    device: str = "cpu",
    threads: int | None = None,
    config_file: str | Path | None = None,
    log: Callable[..., None] = progress,
    report_only: bool = False,
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
        report_only: compute nothing: rebuild the report from the stored units (after a change
            to the report code), naming the units not computed.

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
    # a cache outside the output folder is probed now; one inside it once the folder is locked
    cache_path = None if cache is None else Path(cache)
    cache_inside = cache_path is not None and _inside(cache_path, Path(out))
    if cache_path is not None and not cache_inside:
        usable_cache(cache_path, study.cache_bytes)
    if threads is not None:
        torch.set_num_threads(threads)
    units = list(study.units)
    if len(set(map(str, units))) != len(units):
        raise InputError(f"{study.name}: the units repeat a key ({units}); fix the config")
    with OutputFolder(out, study.name) as folder:
        path = folder.path
        if cache_inside:
            usable_cache(cache_path, study.cache_bytes)
        records = path / study.folder
        held = [str(records)] if _holds_records(records) else []
        held += [str(path / name) for name in study.state_files if (path / name).exists()]
        if not (path / RUN_RECORD_NAME).exists() and held:
            raise InputError(
                f"'{path}' holds stored results ({', '.join(held)}) but no {RUN_RECORD_NAME}, so "
                "their settings are unknown; use a new --out (or delete them to start over)"
            )
        grid = {"units": units} if study.grid is None else study.grid
        folder.check_settings(study.settings, grid)
        if not report_only:  # the record of the run that computes, not of a table rebuild
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
            store = study.store(records, fingerprint(study.settings), study, log)
        context = Context(path, cache_path, resolved, log, report_only)
        stored = {str(u): store.get(u) for u in units}
        if study.prepare is not None:
            study.prepare(context, dict(stored))
        order = units if study.report_key is None else sorted(units, key=study.report_key)
        for unit in units:
            if stored[str(unit)] is not None:
                log(f"{study.name} {unit}: stored in {records}, skipped")
                continue
            if report_only:
                log(f"{study.name} {unit}: not computed (report only)")
                continue
            started = time.perf_counter()
            rows = study.run_unit(unit, context)
            store.put(unit, rows)
            # the report always reads the stored form, so a resumed run's tables equal these
            stored[str(unit)] = store.get(unit)
            tail = "" if study.summary is None else "  " + study.summary(unit, rows)
            log(f"{study.name} {unit}: {time.perf_counter() - started:.0f}s{tail}")
            study.report(path, _done_rows(order, stored))
        return study.report(path, _done_rows(order, stored))


def parts_store(
    parts: Sequence[str] = (), key_name: str | None = None
) -> Callable[[Path, str, Study, Callable[..., None]], PartsStore]:
    """A ``Study.store``: a :class:`PartsStore` of the study's unit files and legacy setting.

    Returns:
        The store factory.

    """

    def build(records: Path, stamp: str, study: Study, log: Callable[..., None]) -> PartsStore:
        return PartsStore(
            records, stamp, study.unit_file, study.legacy_records, parts=parts, key_name=key_name
        )

    return build


def seed_study(
    name: str,
    settings: Mapping[str, Any],
    seeds: Sequence[int],
    run_unit: Callable[[Any, Context], list[dict]],
    report: Callable[[Path, list[dict]], str],
    *,
    parts: Sequence[str] = (),
    state_files: tuple[str, ...] = ("results.csv",),
    key_name: str | None = "seed",
    legacy_records: bool = True,
    **options: Any,
) -> Study:
    """A :class:`Study` whose units are seeds, in the layout of the tiny-LM studies.

    One record a seed, ``seeds/seed-S.json`` (a :class:`PartsStore` with ``parts`` beside the
    rows and the key stored as ``"seed"``); the grid a rerun may extend is ``{"seeds": seeds}``;
    records written before they carried a fingerprint are accepted once ``run.json`` matches;
    ``results.csv`` (with ``state_files``) is refused without ``run.json``.

    Args:
        name: as :class:`Study`.
        settings: as :class:`Study`.
        seeds: the units (``seed_range``).
        run_unit: as :class:`Study`.
        report: as :class:`Study`.
        parts: the extra lists of rows of a record (:class:`PartsStore`).
        state_files: as :class:`Study`.
        key_name: the name the seed is stored under in its record (None: not stored).
        legacy_records: as :class:`Study` (False: every record must carry the fingerprint).
        **options: any other :class:`Study` field (``summary``, ``prepare``, ``cpu_only``,
            ``cache_bytes``).

    Returns:
        The study.

    """
    return Study(
        name,
        settings,
        seeds,
        run_unit,
        report,
        grid={"seeds": seeds},
        unit_file=lambda seed: f"seed-{seed}.json",
        folder="seeds",
        legacy_records=legacy_records,
        state_files=state_files,
        store=parts_store(parts=parts, key_name=key_name),
        **options,
    )


def _holds_records(records: Path) -> bool:
    """A non-empty folder of unit records, or a non-empty file of them (a CSV store)."""
    if records.is_dir():
        return any(records.iterdir())
    return records.is_file() and records.stat().st_size > 0


def _done_rows(units: Sequence[Any], stored: Mapping[str, list[dict] | None]) -> list[dict]:
    return [row for unit in units for row in (stored[str(unit)] or [])]
