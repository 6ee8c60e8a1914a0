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
from sublim_theory.harness.runs import append_durably, atomic_write_json

__all__ = ["MARKER", "CsvAppendStore", "UnitStore"]

MARKER = "#unit"  # first cell of a CSV store's end-of-unit marker row


def _first_difference(stored: Any, expected: Any) -> str:
    return f"fingerprint {stored!r} != {expected!r}"


class UnitStore:
    """One JSON record per finished unit under ``folder``.

    Args:
        folder: where the records live (created on first write).
        fingerprint: the fingerprint of the settings every record must carry.
        file_name: the record's file name for a unit key (default ``unit-KEY.json``).
        legacy: accept records without a fingerprint (written before stores stamped one). Only
            safe when the caller has already matched the folder's ``run.json`` settings.

    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        fingerprint: str,
        file_name: Callable[[Any], str] = lambda unit: f"unit-{unit}.json",
        legacy: bool = False,
    ) -> None:
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

        """
        if not rows:
            raise ValueError(f"unit {unit!r} produced no rows")
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"unit": unit, "fingerprint": self.fingerprint, **extra, "rows": list(rows)}
        atomic_write_json(self.path(unit), record)


class CsvAppendStore:
    """Units' rows appended to one CSV, each unit closed by a marker row.

    The file's first line is the header (``columns``). A unit's rows and its marker row
    ``#unit,<key>,<row count>,<fingerprint>`` are written in one ``append_durably`` call.
    """

    def __init__(
        self, path: str | os.PathLike[str], columns: Sequence[str], fingerprint: str
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.fingerprint = fingerprint

    def _encode(self, rows: Sequence[Sequence[Any]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def load(self, log: Callable[[str], None] | None = None) -> dict[str, list[dict[str, str]]]:
        """The rows of every complete unit, by unit key, cutting off an incomplete tail.

        Returns:
            ``{unit key: rows}`` for the units whose marker row is present.

        Raises:
            InputError: the header differs, a marker's count or fingerprint does not match.

        """
        if not self.path.exists():
            return {}
        text = self.path.read_text()
        lines = text.splitlines(keepends=True)
        if not lines:
            return {}
        header = next(csv.reader([lines[0]]))
        if header != self.columns:
            raise InputError(
                f"'{self.path}' has columns {header}, expected {self.columns}; use another --out"
            )
        done: dict[str, list[dict[str, str]]] = {}
        pending: list[dict[str, str]] = []
        kept = len(lines[0])
        offset = kept
        for line in lines[1:]:
            offset += len(line)
            if not line.endswith("\n"):
                break  # a torn last line: part of an incomplete unit
            cells = next(csv.reader([line]))
            if cells and cells[0] == MARKER:
                key, count, stamp = cells[1], int(cells[2]), cells[3]
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
                pending = []
                kept = offset
            else:
                pending.append(dict(zip(self.columns, cells, strict=False)))
        if kept < len(text):
            with open(self.path, "r+") as handle:
                handle.truncate(kept)
                handle.flush()
                os.fsync(handle.fileno())
            if log is not None:
                log(f"{self.path}: dropped an incomplete unit at the end; it will be recomputed")
        return done

    def append(self, unit: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append one finished unit's rows and its marker in one durable write.

        Raises:
            ValueError: ``rows`` is empty.

        """
        if not rows:
            raise ValueError(f"unit {unit!r} produced no rows")
        text = ""
        if not self.path.exists() or self.path.stat().st_size == 0:
            text = self._encode([self.columns])
        body = [[row.get(c, "") for c in self.columns] for row in rows]
        text += self._encode([*body, [MARKER, unit, len(rows), self.fingerprint]])
        append_durably(self.path, text)
