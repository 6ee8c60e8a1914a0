"""The sweep's table (``sweep.csv``): its columns, durable appends, resumption and strict reading.

One row per configuration x seed x measurement x step. Each finished configuration's rows are
appended in one durable write with an end-of-unit marker row (``harness.store.CsvAppendStore``,
driven by :mod:`sublim_theory.studies.init_distance.run`); a rerun computes only the seeds no
marker covers. Reading skips the marker rows and is otherwise strict: a truncated line, a
duplicate row, a missing column or a cell that is not a number is an error, never a silently
different figure.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.store import is_marker

__all__ = [
    "COLUMNS",
    "ENVIRONMENT_NAME",
    "IDENTITY",
    "INTEGER_COLUMNS",
    "TABLE_NAME",
    "TEXT_COLUMNS",
    "completed_seeds",
    "format_rows",
    "header",
    "read_table",
    "row_cells",
]

TABLE_NAME = "sweep.csv"
ENVIRONMENT_NAME = "environment.json"

COLUMNS = (
    "key",
    "arch",
    "placement",
    "scale",
    "eps",
    "seed",
    "measurement",
    "step",
    "lr",
    "dtype",
    "loss",
    "num_params",
    "batching",
    "init_distance_abs",
    "init_distance_rel",
    "delta_over_eps",
    # one-step report (measurement == "one_step"): the engine's AlignmentReport keys
    "cos_exact_teacher",
    "cos_first_order_teacher",
    "cos_exact_first_order",
    "inner_exact",
    "inner_first_order",
    "norm_exact",
    "norm_first_order",
    "norm_teacher",
    "taylor_residual",
    "A",
    "B",
    "eps_star",
    "teacher_loss_change_exact",
    "teacher_loss_change_first_order",
    # the pieces of the init-distance analysis (theory/alignment.md section 5)
    "norm_K_v",
    "norm_K_delta",
    "cos_K_v_teacher",
    "delta_over_delta_c",
    "inner_mean_offset",
    "inner_first_order_expected",
    "cos_first_order_expected",
    # trajectories (measurement in OPTIMIZERS)
    "cos_step_teacher",
    "cos_displacement_teacher",
    "teacher_loss",
    "imitation_loss",
)
TEXT_COLUMNS = frozenset({"key", "arch", "placement", "measurement", "dtype", "loss", "batching"})
INTEGER_COLUMNS = frozenset({"seed", "step", "num_params"})
# The cells that identify a row: a table holds each combination once.
IDENTITY = ("key", "seed", "measurement", "step")


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def header() -> str:
    """The table's first line."""
    return ",".join(COLUMNS) + "\n"


def row_cells(row: dict[str, Any]) -> dict[str, str]:
    """One row as its cells' text (``repr`` floats, empty for None), by column."""
    return {column: _format(row.get(column)) for column in COLUMNS}


def format_rows(rows: Iterable[dict[str, Any]]) -> str:
    """CSV text (no header) for rows; floats as ``repr`` so they read back bit-identical."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([_format(row.get(column)) for column in COLUMNS])
    return buffer.getvalue()


def _read_text(table: Path) -> str:
    try:
        data = table.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the sweep table '{table}': {error.strerror}") from None
    if b"\0" in data:
        raise InputError(f"'{table}' is a binary file, not a sweep table; point at a sweep's --out")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InputError(f"'{table}' is not UTF-8 text, so not a sweep table") from None


def _records(table: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the data lines, after checking the end, the header and widths.

    Marker rows (``#unit,...``) are skipped.

    Returns:
        The data lines.

    Raises:
        InputError: an incomplete last line, other columns, or a line of the wrong width.

    """
    if not text.endswith("\n"):
        lines = text.count("\n") + 1
        raise InputError(
            f"'{table}' ends with an incomplete line {lines} (a run was killed while writing "
            f"it): delete that last line (e.g. sed -i '$d' {table}) and rerun the same sweep"
        )
    records = list(csv.reader(io.StringIO(text)))
    if records[0] != list(COLUMNS):
        missing = [c for c in COLUMNS if c not in records[0]]
        detail = f"missing column(s) {missing[:4]}" if missing else "other column order"
        raise InputError(
            f"'{table}' does not have this sweep's columns ({detail}; another tool or version "
            "wrote it): rerun the sweep into a new --out folder"
        )
    numbered = [(n, cells) for n, cells in enumerate(records[1:], start=2) if not is_marker(cells)]
    for number, cells in numbered:
        if len(cells) != len(COLUMNS):
            raise InputError(
                f"'{table}' line {number} has {len(cells)} fields, expected {len(COLUMNS)}: the "
                "table is corrupt; remove that line and the rows after it, then rerun"
            )
    return numbered


def completed_seeds(table: Path) -> dict[str, set[int]]:
    """For each configuration key, the seeds an end-of-unit marker of ``table`` covers.

    Rows after the last marker (an append that did not finish) count for nothing. The table is
    never modified here.

    Returns:
        The seeds per key.

    Raises:
        InputError: a table that is not this sweep's (other columns, not UTF-8).

    """
    if not table.exists() or table.stat().st_size == 0:
        return {}
    lines = list(csv.reader(io.StringIO(_read_text(table))))
    if lines[0] != list(COLUMNS):
        raise InputError(f"'{table}' does not have this sweep's columns; use a new --out folder")
    done: dict[str, set[int]] = {}
    for cells in lines[1:]:
        if is_marker(cells) and len(cells) == 4:
            key, _, seeds = cells[1].rpartition("#")
            done.setdefault(key, set()).update(int(s) for s in seeds.split(","))
    return done


def _parse(table: Path, number: int, column: str, value: str) -> Any:
    if column in TEXT_COLUMNS:
        return value
    if value == "":
        return None
    try:
        number_value = int(value) if column in INTEGER_COLUMNS else float(value)
    except ValueError:
        raise InputError(
            f"'{table}' line {number}: {column} = {value!r} is not a number; the table is "
            "corrupt: rerun the sweep into a new --out folder"
        ) from None
    return number_value


def read_table(table: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The sweep table as a list of dicts with numbers parsed (empty cells -> None).

    Returns:
        The rows.

    Raises:
        InputError: no table; a binary or non-UTF-8 file; a truncated last line; columns other
            than :data:`COLUMNS`; a line of the wrong width; a cell that is not a number; the
            same (key, seed, measurement, step) twice.

    """
    path = Path(table)
    if not path.is_file():
        raise InputError(f"no sweep table at '{path}'; run `sublim-theory sweep` first")
    text = _read_text(path)
    if not text:
        raise InputError(f"'{path}' is empty, not a sweep table")
    rows, seen = [], {}
    for number, cells in _records(path, text):
        row = {c: _parse(path, number, c, v) for c, v in zip(COLUMNS, cells)}
        identity = tuple(row[c] for c in IDENTITY)
        if identity in seen:
            raise InputError(
                f"'{path}' line {number} repeats line {seen[identity]} ({row['key']}, seed "
                f"{row['seed']}, {row['measurement']} step {row['step']}): two runs wrote into "
                "one folder; rerun the sweep into a new --out folder"
            )
        seen[identity] = number
        rows.append(row)
    return rows
