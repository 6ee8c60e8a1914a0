"""``numbers --merge``: combine the tables of runs made in parallel (disjoint seeds) into one folder.

Each merged folder must be a ``numbers`` run (its ``run.json`` says so) with the same settings as
the first, and no seed may appear twice. The merged folder gets the union's reports and a
``run.json`` (command, settings, seeds), so a later ``numbers`` run or merge into it is checked
like any other; a folder whose table holds seeds the merge lacks is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import RUN_RECORD_NAME, OutputFolder, read_csv
from sublim_theory.studies.numbers import report

__all__ = ["first_difference", "merge"]


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, x in value.items() for k, v in _leaves(x, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """The first setting (dotted name, sorted) whose value differs, as ``name: a -> b``; or None."""
    left, right = _leaves(a), _leaves(b)
    for key in sorted(set(left) | set(right)):
        if left.get(key, "<unset>") != right.get(key, "<unset>"):
            return f"{key}: {left.get(key, '<unset>')!r} -> {right.get(key, '<unset>')!r}"
    return None


def _settings(directory: Path) -> dict[str, Any]:
    path = directory / RUN_RECORD_NAME
    try:
        record = json.loads(path.read_text())
        command, settings = record["command"], record["settings"]
    except FileNotFoundError:
        raise InputError(
            f"'{path}' does not exist, so the run's settings are unknown; --merge takes output "
            "folders of `numbers` runs"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"'{path}' is unreadable ({type(error).__name__}); cannot merge it"
        ) from None
    if command != "numbers":
        raise InputError(f"'{directory}' holds results of `{command}`, not `numbers`; cannot merge")
    return settings


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return read_csv(path)


def merge(directories: Sequence[Path], out: Path) -> str:
    """Merge the runs in ``directories`` into ``out``; return the table.

    Returns:
        The table.

    Raises:
        InputError: a folder that is not a ``numbers`` run, other settings than the first run's,
            a seed in two runs, or an ``out`` whose table holds seeds the merge lacks.

    """
    settings, seen = None, set()
    rows, entangled, steps = [], [], []
    for directory in directories:
        results = directory / "results.csv"
        if not results.is_file():
            raise InputError(f"'{results}' does not exist; --merge takes output folders of runs")
        own = _settings(directory)
        if settings is None:
            settings, first = own, directory
        elif (difference := first_difference(settings, own)) is not None:
            raise InputError(
                f"'{directory}' was run with other settings than '{first}' ({difference}); "
                "only runs of one config merge"
            )
        part = report.read_csv(results)
        seeds = {r["seed"] for r in part}
        if seeds & seen:
            raise InputError(f"seed(s) {sorted(seeds & seen)} appear in more than one merged run")
        seen |= seeds
        rows += part
        entangled += _read(directory / "entanglement.csv")
        steps += _read(directory / "steps.csv")
    with OutputFolder(out, "numbers") as folder:
        lost = report.table_seeds(folder.path / "results.csv") - seen
        if lost:
            raise InputError(
                f"'{folder.path / 'results.csv'}' holds seed(s) {sorted(lost)} that the merged "
                "runs lack; merging would drop them: choose another --out"
            )
        folder.check_settings(settings, {"seeds": sorted(seen)})
        return report.write_reports(folder.path, rows, entangled, steps)
