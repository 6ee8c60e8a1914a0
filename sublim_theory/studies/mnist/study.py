"""The MNIST experiment as a study: one unit per run (an m, or a cell of ``[[cells]]``).

:func:`build_cells` turns the merged settings into runs; :func:`mnist_study` declares them and
:func:`run_mnist` runs them with :func:`sublim_theory.harness.study.run_study`: the folder is
locked, ``run.json`` checked (a rerun may add runs, never change settings), each finished run
stored atomically as ``runs/<name>.json`` with the settings fingerprint (the N models of one
run train together, so a run is the unit a rerun resumes from), and the reports rebuilt from
the stored runs after each one: ``results.json``, ``models.csv`` (one row per model),
``table.md`` (mean, 95% CI, n); without cells also ``table.csv`` (tidy) and ``mnist.png``
(read from the table), with cells ``study.png`` (read from ``models.csv``). Runs stored before
records carried a fingerprint (``runs/*.json`` holding the bare result) are read as they are
once ``run.json`` matches; their tables rebuild byte-identical.
"""

from __future__ import annotations

import math
import re
import resource
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record, restore_nan
from sublim_theory.harness.runs import (
    OutputFolder,
    atomic_write_json,
    atomic_write_text,
    load_toml,
    parse_config,
    resolve_device,
)
from sublim_theory.harness.store import UnitStore
from sublim_theory.harness.study import Context, Study, progress, run_study
from sublim_theory.studies.mnist.experiment import ExperimentResult, MnistConfig, run_experiment
from sublim_theory.studies.mnist.report import (
    format_cosines,
    format_run,
    model_rows,
    plot_study,
    plot_table,
    read_models,
    read_table,
    result_rows,
    study_markdown,
    tidy_table,
    write_models,
    write_table,
)
from sublim_theory.testbeds.mnist.data import MnistData, dataset_dir, load_mnist

__all__ = [
    "RUNS_FOLDER",
    "Cell",
    "build_cells",
    "build_configs",
    "mnist_study",
    "resolve_settings",
    "result_from_record",
    "run_mnist",
    "stored_name",
]

RUNS_FOLDER = "runs"  # one JSON file per finished run


def resolve_settings(
    config_file: Path | None,
    flags: Mapping[str, object],
    mnist_dir: Path | None = None,
    dataset: str | None = None,
) -> tuple[dict[str, object], Path | None]:
    """``MnistConfig`` defaults < the TOML config < the flags given (``None``: not given).

    Args:
        config_file: the TOML config (keys: ``MnistConfig`` field names, ``mnist_dir`` and
            ``cells``), or None.
        flags: command-line values by ``MnistConfig`` field name; None where not given.
        mnist_dir: ``--mnist-dir`` (wins over the config's ``mnist_dir``).
        dataset: ``--dataset``, an installed data set (wins over both).

    Returns:
        ``(raw MnistConfig values, the digits' folder or None for the embedded digits)``.

    Raises:
        InputError: for an unreadable or invalid config file, a bad ``mnist_dir`` in it, or a
            ``teacher_epochs`` that is neither a positive integer nor ``auto``.

    """
    settings: dict[str, object] = {}
    folder: Path | None = None
    if config_file is not None:
        settings = dict(load_toml(config_file))  # may hold "cells": see build_cells
        if "mnist_dir" in settings:
            value = settings.pop("mnist_dir")
            if not isinstance(value, str):
                raise InputError(f"{config_file}: mnist_dir must be a string, got {value!r}")
            folder = Path(value)
    for name in MnistConfig.field_names():
        value = flags.get(name)
        if value is not None:
            settings[name] = value
    if mnist_dir is not None:
        folder = mnist_dir
    if dataset is not None:
        folder = dataset_dir(dataset)
    epochs = settings.get("teacher_epochs")
    if epochs == "auto":
        del settings["teacher_epochs"]  # the default: matched to the paper's number of steps
    elif isinstance(epochs, str):  # from the flag; TOML gives an int or a string
        try:
            settings["teacher_epochs"] = int(epochs)
        except ValueError as error:
            raise InputError(
                f"teacher_epochs must be a positive integer or 'auto', got {epochs!r}"
            ) from error
    return settings, folder


def build_configs(settings: dict[str, object], source: str = "settings") -> list[MnistConfig]:
    """One ``MnistConfig`` per value of ``aux_logits`` (a list there means an m sweep).

    Returns:
        The configs, in the order of ``aux_logits``.

    Raises:
        InputError: for a value of the wrong type or out of range, or a repeated m.

    """
    aux = settings.get("aux_logits", MnistConfig.aux_logits)
    aux_values = list(aux) if isinstance(aux, (list, tuple)) else [aux]
    if not aux_values or len(set(map(repr, aux_values))) != len(aux_values):
        raise InputError(f"{source}: aux_logits must be distinct values of m, got {aux_values}")
    return [parse_config(MnistConfig, dict(settings, aux_logits=m), source) for m in aux_values]


@dataclass(frozen=True)
class Cell:
    """One run of a study: its name, the factor it varies, that factor's level, its config."""

    name: str
    factor: str
    level: str
    config: MnistConfig


def build_cells(settings: dict[str, object], source: str = "settings") -> list[Cell]:
    """The runs of ``settings``: one per m, times one per entry of ``cells`` if present.

    Without ``cells`` the runs are named ``aux_logits-M`` (factor ``aux_logits``). Each entry of
    ``cells`` is a table of overrides; it is named ``key=value,...`` (``baseline`` when empty),
    its factor is its first key and its level its values joined by ``/`` (``sgd/0.3``).

    Returns:
        The runs.

    Raises:
        InputError: for a malformed ``cells`` list, an invalid override or a repeated cell.

    """
    base = {k: v for k, v in settings.items() if k != "cells"}
    if "cells" not in settings:
        return [
            Cell(f"aux_logits-{c.aux_logits}", "aux_logits", str(c.aux_logits), c)
            for c in build_configs(base, source)
        ]
    entries = settings["cells"]
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        raise InputError(f"{source}: cells must be a non-empty list of tables ([[cells]] in TOML)")
    cells: list[Cell] = []
    for index, overrides in enumerate(entries):
        if "cells" in overrides:
            raise InputError(f"{source} [cells {index}]: a cell may not hold cells of its own")
        name = ",".join(f"{k}={_level(v)}" for k, v in overrides.items()) or "baseline"
        factor = next(iter(overrides), "baseline")
        level = "/".join(map(_level, overrides.values())) or "default"
        configs = build_configs({**base, **overrides}, f"{source} [cells {index}]")
        for config in configs:
            suffix = f",aux_logits={config.aux_logits}" if len(configs) > 1 else ""
            cells.append(Cell(name + suffix, factor, level, config))
    names = [cell.name for cell in cells]
    if len(set(names)) != len(names):
        raise InputError(f"{source}: cells must be distinct, got {names}")
    return cells


def _level(value: object) -> str:
    """A setting's value as a short label: ``1e-05``, ``64x64``, ``sgd``."""
    if isinstance(value, list):
        return "x".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def stored_name(cell: str) -> str:
    """The file name of a run's record under ``runs/``."""
    return re.sub(r"[^A-Za-z0-9._=,-]", "_", cell) + ".json"


def result_from_record(record: dict[str, Any]) -> ExperimentResult:
    """A stored run back as an ``ExperimentResult`` (its JSON nulls back to NaN).

    Returns:
        The result.

    Raises:
        InputError: a record this command did not write.

    """
    try:
        record = dict(record)
        record.pop("cell", None)
        config, data = record.pop("config"), record.pop("data")  # their nulls mean None
        order = record.pop("group_order")  # JSON sorts keys; the table follows this order
        result = ExperimentResult(config=config, data=data, **restore_nan(record))
        result.groups = {name: result.groups[name] for name in order}
        return result
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(
            f"a stored run of cell {record.get('cell')!r} is unreadable ({type(error).__name__}: "
            f"{error}); delete its file under runs/ to recompute it"
        ) from None


def _legacy(unit: Any, record: dict[str, Any]) -> list[dict[str, Any]]:
    """A run stored before records carried a fingerprint: the bare result."""
    return [{"cell": str(unit), **record}]


def mnist_study(
    settings: dict[str, object],
    data: MnistData,
    device: str,
    source: str = "settings",
    title: str | None = None,
) -> Study:
    """The runs of ``settings`` on ``data`` as a :class:`Study` (units: the cells' names).

    Returns:
        The study.

    Raises:
        InputError: a bad setting or cell.

    """
    cells = {cell.name: cell for cell in build_cells(settings, source)}
    first = next(iter(cells.values()))
    is_study = "cells" in settings
    if is_study:
        shared = {k: v for k, v in settings.items() if k not in ("cells", "aux_logits")}
        grid = {"cells": list(cells)}
    else:
        shared = {k: v for k, v in asdict(first.config).items() if k != "aux_logits"}
        grid = {"aux_logits": [cell.config.aux_logits for cell in cells.values()]}
    resolved = resolve_device(device)
    teachers: dict[tuple, tuple] = {}  # runs with identical teachers train them once

    def run_unit(name: str, context: Context) -> list[dict[str, Any]]:
        config = cells[name].config
        context.log(f"run: {name}, {config.models} models, data {data.source}")
        result = run_experiment(config, data, context.log, context.device, teachers)
        return [{"cell": name, **asdict(result), "group_order": list(result.groups)}]

    def report(out: Path, rows: list[dict[str, Any]]) -> str:
        done = [(cells[row["cell"]], result_from_record(row)) for row in rows]
        models = [m for c, r in done for m in model_rows(c.name, c.factor, c.level, r)]
        write_models(models, out / "models.csv")
        atomic_write_text(out / "table.md", study_markdown(read_models(out / "models.csv")))
        if is_study:
            label = f"{title or 'mnist study'}, {first.config.models} models per cell"
            plot_study(read_models(out / "models.csv"), out / "study.png", label)
        else:
            write_table(tidy_table([r for _, r in done]), out / "table.csv")
            plot_table(read_table(out / "table.csv"), out / "mnist.png")
        _write_results(out, done, str(resolved))
        return "\n".join(
            f"\n{c.name} ({r.teacher_epochs} teacher epochs)\n{format_run(r)}\n"
            "per-epoch cosine(student update, teacher displacement), mean over models:\n"
            f"{format_cosines(r)}"
            for c, r in done
        )

    def store(records: Path, stamp: str, study: Study, log: Callable[..., None]) -> UnitStore:
        return UnitStore(records, stamp, lambda name: stored_name(str(name)), legacy=_legacy)

    return Study(
        "mnist",
        {**shared, "data": data.describe(), "device": resolved.type},
        list(cells),
        run_unit,
        report,
        grid=grid,
        folder=RUNS_FOLDER,
        store=store,
    )


def _write_results(out: Path, done: list[tuple[Cell, ExperimentResult]], device: str) -> None:
    """``results.json``: every run's rows (the paper's table at the top level for one run)."""
    runs = [
        {
            "cell": cell.name,
            "aux_logits": r.config["aux_logits"],
            "config": r.config,
            "teacher_epochs": r.teacher_epochs,
            "derangement": r.derangement,
            "seconds": r.seconds,
            "rows": result_rows(r),
        }
        for cell, r in done
    ]
    document: dict[str, object] = {
        "data": done[0][1].data,
        "environment": environment_record(device),
        "seconds": math.fsum(r.seconds.get("total", 0.0) for _, r in done),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if len(runs) == 1:
        document.update(runs[0]["rows"])  # the paper's table at the top level
    document["runs"] = runs
    atomic_write_json(out / "results.json", document)


def run_mnist(
    settings: dict[str, object],
    mnist_dir: Path | None,
    out: str | Path,
    *,
    device: str = "auto",
    source: str = "settings",
    title: str | None = None,
    log: Callable[..., None] = progress,
) -> str:
    """Check every setting, then train every run not yet stored in ``out``.

    The folder is probed and its lock tried before the digits are read (a busy folder is
    refused at once); ``run_study`` then holds it for the run.

    Returns:
        The text of every run's table (what the command prints).

    Raises:
        InputError: a bad setting, device, data folder or output folder, before any training.

    """
    build_cells(settings, source)
    resolve_device(device)
    with OutputFolder(out, "mnist"):
        pass
    data = load_mnist(mnist_dir)  # reads and checks the digits: bad files fail here
    study = mnist_study(settings, data, device, source, title)
    return run_study(study, out, device=device, log=log)
