"""Stores of finished units: a unit is done only when its complete record is stored atomically.

Every study splits its work into units (a seed, a model, a job). A unit's record is written once,
when the unit has finished, in one atomic step, together with the fingerprint of the settings it
was computed under (``harness.runs.fingerprint``). On a rerun the store says which units are done;
a record that is unreadable, empty, or stamped with other settings is refused with one line that
names the file and what to do, never silently skipped, pooled or dropped.

Two layouts:

- :class:`UnitStore`: one JSON file per unit (``{"unit", "fingerprint", "rows"}``), written with
  ``atomic_write_json`` (temporary file with a unique name, fsync, rename);
- :class:`CsvAppendStore`: one CSV whose rows are appended unit by unit, for studies whose table
  must rebuild byte-identical from one file. A unit's rows go in ONE durable append that ends with
  a marker row naming the unit, its row count and the fingerprint; on resume a trailing unit with
  no marker (a run killed or a disk filled mid-append) is cut off and recomputed, with one line
  saying so. A unit counts as done only when its marker is present, never when "any row exists".
  A file written before markers existed (a *legacy* file) is migrated once, when the study gives
  a rule that splits its rows into units: the complete units get their markers (one atomic
  rewrite; the data lines are kept byte for byte), an incomplete tail is dropped.

Readers of such a CSV skip the marker rows (:func:`is_marker`), so a table built from a migrated
file equals the one built from the legacy file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import (
    append_durably,
    atomic_write_json,
    atomic_write_text,
    write_failure,
)

__all__ = ["MARKER", "CsvAppendStore", "LegacySplit", "UnitStore", "is_marker"]

MARKER = "#unit"  # first cell of a CSV store's end-of-unit marker row
# A legacy file's rows (dicts of cell text, in file order) -> the complete units at its start, as
# (unit key, number of rows); rows after them are an incomplete unit, dropped.
LegacySplit = Callable[[list[dict[str, str]]], list[tuple[str, int]]]


def is_marker(cells: Sequence[str]) -> bool:
    """Whether a CSV row (a list of cells) is a :class:`CsvAppendStore` end-of-unit marker."""
    return bool(cells) and cells[0] == MARKER


def _first_difference(stored: Any, expected: Any) -> str:
    return f"fingerprint {stored!r} != {expected!r}"


class UnitStore:
    """One JSON record per finished unit under ``folder``.

    Args:
        folder: where the records live (created on first write).
        fingerprint: the fingerprint of the settings every record must carry.
        file_name: the record's file name for a unit key (default ``unit-KEY.json``).
        legacy: accept records without a fingerprint (written before stores stamped one). Only
            safe when the caller has already matched the folder's ``run.json`` settings. A
            callable reads a legacy record of another shape: ``legacy(unit, record) -> rows``.

    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        fingerprint: str,
        file_name: Callable[[Any], str] = lambda unit: f"unit-{unit}.json",
        legacy: bool | Callable[[Any, Any], list[dict]] = False,
    ) -> None:
        """Name the records' folder and the settings fingerprint; nothing is read yet."""
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.file_name = file_name
        self.legacy = legacy

    def path(self, unit: Any) -> Path:
        """The record file of ``unit``."""
        return self.folder / self.file_name(unit)

    def get(self, unit: Any) -> list[dict] | None:
        """The stored rows of ``unit``, or None when it has no record yet.

        Returns:
            The rows, or None.

        Raises:
            InputError: the record is unreadable, has no rows, names another unit, or was
                computed under other settings.

        """
        path = self.path(unit)
        if not path.exists():
            return None
        advice = f"delete '{path}' to recompute that unit"
        try:
            record = json.loads(path.read_text())
            if callable(self.legacy) and "fingerprint" not in record and "rows" not in record:
                record = {"unit": unit, "rows": self.legacy(unit, record)}
            rows = record["rows"]
            key = record.get("unit", unit)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"stored unit '{path}' is unreadable ({type(error).__name__}); {advice}"
            ) from None
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"stored unit '{path}' holds no rows; {advice}")
        if str(key) != str(unit):
            raise InputError(f"stored unit '{path}' is of unit {key!r}, not {unit!r}; {advice}")
        stamp = record.get("fingerprint")
        if stamp is None and not self.legacy:
            raise InputError(f"stored unit '{path}' carries no settings fingerprint; {advice}")
        if stamp is not None and stamp != self.fingerprint:
            raise InputError(
                f"stored unit '{path}' was computed under other settings "
                f"({_first_difference(stamp, self.fingerprint)}); {advice} or use another --out"
            )
        return rows

    def put(self, unit: Any, rows: Sequence[Mapping[str, Any]], **extra: Any) -> None:
        """Store the complete record of a finished unit, atomically.

        Raises:
            ValueError: ``rows`` is empty (a unit with no rows is not a finished unit).
            InputError: the record cannot be written (a full disk); no record is left behind.

        """
        if not rows:
            raise ValueError(f"unit {unit!r} produced no rows")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(write_failure(self.folder, error)) from None
        record = {"unit": unit, "fingerprint": self.fingerprint, **extra, "rows": list(rows)}
        atomic_write_json(self.path(unit), record)


class CsvAppendStore:
    """Units' rows appended to one CSV, each unit closed by a marker row.

    The file's first line is the header (``columns``). A unit's rows and its marker row
    ``#unit,<key>,<row count>,<fingerprint>`` are written in one ``append_durably`` call (all or
    nothing: a failed write is cut back). ``get``/``put`` give it the interface of
    :class:`UnitStore`; the rows read back are dicts of cell text.

    Args:
        path: the CSV file.
        columns: its header.
        fingerprint: the fingerprint of the settings every marker must carry.
        legacy: how to split the rows of a file without markers into units (:data:`LegacySplit`);
            None refuses such a file.
        log: where the one-line notes go (a dropped incomplete unit, a migrated legacy file).

    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: Sequence[str],
        fingerprint: str,
        *,
        legacy: LegacySplit | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Name the file, its header and the fingerprint; the file is read on first use."""
        self.path = Path(path)
        self.columns = list(columns)
        self.fingerprint = fingerprint
        self.legacy = legacy
        self.log = log
        self._done: dict[str, list[dict[str, str]]] | None = None

    def _encode(self, rows: Sequence[Sequence[Any]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def _text(self) -> str:
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise InputError(f"cannot read '{self.path}' ({error.strerror})") from None
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise InputError(f"'{self.path}' is not UTF-8 text; use another --out") from None

    def _cut(self, size: int, what: str, log: Callable[[str], None] | None) -> None:
        with open(self.path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())
        if log is not None:
            log(f"{self.path}: dropped {what} at the end; it will be recomputed")

    def load(self, log: Callable[[str], None] | None = None) -> dict[str, list[dict[str, str]]]:
        """The rows of every complete unit, by unit key, cutting off an incomplete tail.

        A trailing unit without its marker (rows cut at a row boundary, or a torn last line) is
        cut off the file, saying so through ``log``, so the next append starts on a fresh line
        and the unit is recomputed. A legacy file (rows, no marker at all) is migrated once
        through ``legacy``.

        Returns:
            ``{unit key: rows}`` for the units whose marker row is present, in file order.

        Raises:
            InputError: the file is not UTF-8 text, the header differs, a marker is malformed
                or its count or fingerprint does not match, or a legacy file cannot be split.

        """
        log = self.log if log is None else log
        if not self.path.exists():
            return {}
        text = self._text()
        lines = text.splitlines(keepends=True)
        if not lines:
            return {}
        if not lines[0].endswith("\n"):  # a torn header: nothing was stored yet
            self._cut(0, "a torn header", log)
            return {}
        header = next(csv.reader([lines[0]]))
        if header != self.columns:
            raise InputError(
                f"'{self.path}' has columns {header}, expected {self.columns}; use another --out"
            )
        done: dict[str, list[dict[str, str]]] = {}
        pending: list[dict[str, str]] = []
        pending_lines: list[str] = []
        kept = offset = len(lines[0].encode())
        markers = 0
        for number, line in enumerate(lines[1:], start=2):
            offset += len(line.encode())
            if not line.endswith("\n"):
                break  # a torn last line: part of an incomplete unit
            cells = next(csv.reader([line]), [])
            if is_marker(cells):
                markers += 1
                key, count, stamp = self._marker(cells, number)
                if stamp != self.fingerprint:
                    raise InputError(
                        f"'{self.path}': unit {key} was computed under other settings "
                        f"({_first_difference(stamp, self.fingerprint)}); use another --out"
                    )
                if count != len(pending):
                    raise InputError(
                        f"'{self.path}': unit {key} has {len(pending)} rows, its marker says "
                        f"{count}; delete the file to start over"
                    )
                done[key] = pending
                pending, pending_lines = [], []
                kept = offset
            else:
                pending.append(dict(zip(self.columns, cells, strict=False)))
                pending_lines.append(line)
        if markers == 0 and pending:
            return self._migrate(lines[0], pending, pending_lines, log)
        if kept < len(text.encode()):
            self._cut(kept, "an incomplete unit", log)
        return done

    def _marker(self, cells: list[str], number: int) -> tuple[str, int, str]:
        try:
            _, key, count, stamp = cells
            return key, int(count), stamp
        except ValueError:
            raise InputError(
                f"'{self.path}' line {number} is a malformed unit marker {cells!r}; delete the "
                "file to start over"
            ) from None

    def _migrate(
        self,
        header: str,
        rows: list[dict[str, str]],
        lines: list[str],
        log: Callable[[str], None] | None,
    ) -> dict[str, list[dict[str, str]]]:
        """Give a legacy file (rows, no markers) its markers: one atomic rewrite."""
        if self.legacy is None:
            raise InputError(
                f"'{self.path}' holds rows but no unit markers (written by an older version); "
                "use another --out"
            )
        units = self.legacy(rows)
        done: dict[str, list[dict[str, str]]] = {}
        parts, start = [header], 0
        for key, count in units:
            if count < 1 or start + count > len(rows):
                raise InputError(f"'{self.path}': the legacy unit {key} does not fit the file")
            done[str(key)] = rows[start : start + count]
            parts += lines[start : start + count]
            parts.append(self._encode([[MARKER, key, count, self.fingerprint]]))
            start += count
        atomic_write_text(self.path, "".join(parts))
        if log is not None:
            dropped = f", dropped {len(rows) - start} rows of an incomplete unit" * (
                start < len(rows)
            )
            log(f"{self.path}: marked the {len(units)} units of a legacy file{dropped}")
        return done

    def stored(self) -> dict[str, list[dict[str, str]]]:
        """Every complete unit's rows by unit key, in file order (loaded on first use)."""
        if self._done is None:
            self._done = self.load()
        return dict(self._done)

    def get(self, unit: Any) -> list[dict[str, str]] | None:
        """The stored rows of ``unit`` (cell text), or None when its marker is absent."""
        if self._done is None:
            self._done = self.load()
        return self._done.get(str(unit))

    def put(self, unit: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store a finished unit (:meth:`append`); ``get`` then returns its rows as read back."""
        if self._done is None:
            self._done = self.load()
        text = self.append(unit, rows)
        written = list(csv.reader(io.StringIO(text)))
        if written and written[0] == self.columns:
            written = written[1:]
        self._done[str(unit)] = [dict(zip(self.columns, cells)) for cells in written[:-1]]

    def append(self, unit: Any, rows: Sequence[Mapping[str, Any]]) -> str:
        """Append one finished unit's rows and its marker in one durable write.

        Call :meth:`load` (or :meth:`get`) first: it cuts a torn tail, so the rows never glue
        onto a half-written line.

        Returns:
            The text appended.

        Raises:
            ValueError: ``rows`` is empty.
            InputError: the write failed (a full disk); the file is as it was before.

        """
        if not rows:
            raise ValueError(f"unit {unit!r} produced no rows")
        text = ""
        if not self.path.exists() or self.path.stat().st_size == 0:
            text = self._encode([self.columns])
        body = [[row.get(c, "") for c in self.columns] for row in rows]
        text += self._encode([*body, [MARKER, unit, len(rows), self.fingerprint]])
        append_durably(self.path, text)
        return text
