"""The finetune study on the one study mechanism (``harness.study.run_study``).

Before any seed, each cell's learning rate is chosen once (``variants.select_learning_rates`` on
``[finetune] select_seed``) and stored with the settings fingerprint as ``selection.json``; a
rerun reads it back, refusing a file that is unreadable, incomplete or of other settings. A unit
is a seed: every cell's student and control, stored as ``seeds/seed-S.json`` (tidy rows and
per-step rows). The reports (``report.write_reports``) are rebuilt after each seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.records import restore_nan
from sublim_theory.harness.runs import atomic_write_json, fingerprint
from sublim_theory.harness.study import PART, Context, Study, seed_range, seed_study, split_parts
from sublim_theory.studies.finetune import report, variants
from sublim_theory.studies.numbers.report import write_csv
from sublim_theory.testbeds.lm import training

__all__ = ["SELECTION", "build", "read_selection"]

SELECTION = "selection.json"
_GRID_KEYS = ("seed", "cell", "lr", "heldout_loss", "final_loss")


def read_selection(path: Path, cells: list[str], stamp: str) -> tuple[dict, list[dict]]:
    """The chosen learning rates and the grid stored in ``path`` (NaN restored).

    A file without a fingerprint (written before selections carried one) is accepted: the caller
    has matched the folder's ``run.json`` settings.

    Returns:
        ``({cell: lr}, grid rows)``.

    Raises:
        InputError: the file is unreadable, not a selection, lacks a cell's learning rate, or
            was made under other settings.

    """
    advice = f"delete '{path}' to choose the learning rates again"
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
        lrs, grid = record["lrs"], restore_nan(record["grid"])
        stamp_stored = record.get("fingerprint")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"'{path}' is unreadable ({type(error).__name__}); {advice}") from None
    if stamp_stored is not None and stamp_stored != stamp:
        raise InputError(f"'{path}' was made under other settings; {advice} or use another --out")
    good = isinstance(lrs, dict) and isinstance(grid, list) and grid
    good = good and all(isinstance(g, dict) and set(_GRID_KEYS) <= set(g) for g in grid)
    if not good:
        raise InputError(f"'{path}' is not a learning-rate selection; {advice}")
    for cell in cells:
        lr = lrs.get(cell)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise InputError(
                f"'{path}' holds no usable learning rate for {cell} ({lr!r}); {advice}"
            )
    return lrs, grid


def build(config_file: str | Path | None, first_seed: int, seeds: int) -> Study:
    """The finetune study of a config file for ``seeds`` seeds from ``first_seed``.

    Returns:
        The study.

    Raises:
        InputError: a bad config or seed range.

    """
    config, ft = variants.load_config(config_file)
    units = seed_range(first_seed, seeds)
    settings = {"numbers": config.to_dict(), "finetune": asdict(ft)}
    cells = [cell.name for cell in variants.cells(ft)]
    state: dict[str, Any] = {"data": {}}  # the selection, and the select seed's prepared data

    def prepare(context: Context, stored: Any) -> None:
        path = context.out / SELECTION
        if path.exists():
            lrs, grid = read_selection(path, cells, fingerprint(settings))
            context.log(f"learning rates from {path}")
        elif context.report_only:
            raise InputError(
                f"'{path}' is missing, so there is nothing to report; run without report-only"
            )
        else:
            started = time.perf_counter()
            data = variants.prepare_seed(config, ft, ft.select_seed, context.cache, context.log)
            state["data"][ft.select_seed] = data
            lrs, grid = variants.select_learning_rates(data, config, ft, context.log)
            record = {"lrs": lrs, "grid": grid, "seconds": time.perf_counter() - started}
            atomic_write_json(path, {**record, "fingerprint": fingerprint(settings)})
        state["lrs"], state["grid"] = lrs, grid
        write_csv(context.out / "lr_grid.csv", grid, report.COLUMNS["lr_grid.csv"])
        context.log("chosen learning rates: " + ", ".join(f"{c} {lr:g}" for c, lr in lrs.items()))

    def run_unit(seed: int, context: Context) -> list[dict]:
        data = state["data"].pop(seed, None) or variants.prepare_seed(
            config, ft, seed, context.cache, context.log
        )
        rows, steps = variants.run_seed(data, state["lrs"], config, ft, context.log)
        return rows + [{**s, PART: "steps"} for s in steps]

    def write_rows(out: Path, rows: list[dict]) -> str:
        main, steps = split_parts(rows, ("steps",))
        return report.write_reports(out, main, steps, state["lrs"], state["grid"])

    return seed_study(
        "finetune",
        settings,
        units,
        run_unit,
        write_rows,
        parts=("steps",),
        state_files=(SELECTION, "results.csv"),
        cpu_only=True,
        prepare=prepare,
        cache_bytes=training.checkpoint_bytes(config),
    )
