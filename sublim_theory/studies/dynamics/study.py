"""The dynamics experiment as a study: one unit per student epoch.

:func:`dynamics_study` declares the epochs and :func:`run_dynamics` runs them with
:func:`sublim_theory.harness.study.run_study`: the folder is locked and ``run.json`` checked;
each finished epoch's rows (every step's metrics and the epoch's test accuracy) are stored as
``units/epoch-K.json`` with the settings fingerprint, and ``steps.csv``, ``accuracy.csv``,
``table.md`` and ``dynamics.png`` are rebuilt from the stored epochs after each one.

Training needs the state after the previous epoch (models, Adam moments): it is kept in
``state.pt`` (written atomically after every epoch, deleted when the run is complete). An epoch
whose rows the state already holds is stored from it without training, so a run killed between
the two writes loses nothing. A folder written before epochs were stored (``steps.csv`` and
``accuracy.csv`` of a finished run, no ``units/``) has its epochs read from those tables when
they hold them whole (:func:`table_rows`); otherwise the epoch is recomputed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import (
    OutputFolder,
    atomic_write_bytes,
    load_toml,
    parse_config,
    read_csv,
    resolve_device,
)
from sublim_theory.harness.study import Context, Study, progress, run_study
from sublim_theory.studies.dynamics.experiment import (
    GROUPS,
    STEP_METRICS,
    DynamicsConfig,
    DynamicsState,
    start_state,
    train_epoch,
)
from sublim_theory.studies.dynamics.report import STEP_COLUMNS, write_reports
from sublim_theory.testbeds.mnist.data import MnistData, load_mnist

__all__ = [
    "STATE_NAME",
    "dynamics_study",
    "epoch_rows",
    "resolve_config",
    "run_dynamics",
    "table_rows",
]

STATE_NAME = "state.pt"  # the state after the last trained epoch; deleted once complete
Row = dict[str, Any]


def epoch_rows(config: DynamicsConfig, state: DynamicsState, epoch: int) -> list[Row]:
    """The stored rows of ``epoch`` (1-based), from a state that has trained it.

    Steps ``(epoch - 1) * blocks + 1 .. epoch * blocks`` of every group and model, the epoch's
    accuracy per group and model, and for epoch 1 also the reference, teacher and untrained
    (epoch 0) accuracies.

    Returns:
        The epoch's step rows and accuracy rows.

    """
    n_models, blocks = config.models, config.blocks
    columns = {
        name: state.steps[name][(epoch - 1) * blocks : epoch * blocks].tolist()
        for name in STEP_METRICS
    }
    rows: list[Row] = []
    for g, group in enumerate(GROUPS):
        for i in range(n_models):
            for t in range(blocks):
                values = {name: columns[name][t][g * n_models + i] for name in STEP_METRICS}
                step = (epoch - 1) * blocks + t + 1
                rows.append(
                    {
                        "table": "steps",
                        "group": group,
                        "model": i,
                        "epoch": epoch,
                        "step": step,
                        **values,
                    }
                )
    accuracy = state.accuracy.tolist()
    epochs = [0, epoch] if epoch == 1 else [epoch]
    if epoch == 1:
        for i in range(n_models):
            for group, values in (
                ("reference", state.reference_accuracy),
                ("teacher", state.teacher_accuracy),
            ):
                rows.append(
                    {
                        "table": "accuracy",
                        "group": group,
                        "model": i,
                        "epoch": 0,
                        "accuracy": float(values[i]),
                    }
                )
    for g, group in enumerate(GROUPS):
        for i in range(n_models):
            for e in epochs:
                value = float(accuracy[e][g * n_models + i])
                rows.append(
                    {"table": "accuracy", "group": group, "model": i, "epoch": e, "accuracy": value}
                )
    return rows


def table_rows(out: Path, config: DynamicsConfig) -> dict[int, list[Row]]:
    """The rows of every epoch that the folder's ``steps.csv`` and ``accuracy.csv`` hold whole.

    For folders written before epochs were stored. The values are the tables' 6 significant
    digits, which is all the tables and reports ever show, so the reports rebuild identically.
    Read once, before the first report rewrites the tables.

    Returns:
        ``{epoch: rows}``; empty when the tables are missing or damaged.

    """
    try:
        steps = _read(out / "steps.csv", STEP_COLUMNS)
        accuracy = _read(out / "accuracy.csv", ("group", "model", "epoch", "accuracy"))
    except (OSError, UnicodeDecodeError, ValueError, KeyError):
        return {}
    found = {}
    for epoch in range(1, config.student_epochs + 1):
        rows = _epoch_from_tables(config, steps, accuracy, epoch)
        if rows is not None:
            found[epoch] = rows
    return found


def _epoch_from_tables(
    config: DynamicsConfig, steps: list[Row], accuracy: list[Row], epoch: int
) -> list[Row] | None:
    mine = [r for r in steps if r["epoch"] == epoch]
    fixed = [r for r in accuracy if r["group"] in ("reference", "teacher")]
    wanted = {0, epoch} if epoch == 1 else {epoch}
    trained = [r for r in accuracy if r["group"] in GROUPS and r["epoch"] in wanted]
    n_models = config.models
    cells = {(r["group"], r["model"], r["step"]) for r in mine}
    if (
        len(mine) != len(cells)
        or cells
        != {
            (g, i, (epoch - 1) * config.blocks + t + 1)
            for g in GROUPS
            for i in range(n_models)
            for t in range(config.blocks)
        }
        or len(trained) != len(GROUPS) * n_models * len(wanted)
        or (epoch == 1 and len(fixed) != 2 * n_models)
    ):
        return None
    rows = [{"table": "steps", **r} for r in mine]
    rows += [{"table": "accuracy", **r} for r in (fixed if epoch == 1 else []) + trained]
    return rows


def _read(path: Path, columns: tuple[str, ...]) -> list[Row]:
    """A table this study wrote, strictly: its header, every row whole, numbers parsed."""
    schema = {columns[0]: str, "model": int, "epoch": int, "step": int}
    return read_csv(
        path, {k: v for k, v in schema.items() if k in columns}, other=float, columns=columns
    )


def _save_state(path: Path, state: DynamicsState) -> None:
    buffer = io.BytesIO()
    torch.save({f.name: getattr(state, f.name) for f in fields(state)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_state(path: Path) -> DynamicsState:
    try:
        return DynamicsState(**torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # any unreadable file means the same thing to the user
        raise InputError(
            f"stored state '{path}' is unreadable ({type(error).__name__}); delete it to restart"
        ) from error


def _to(state: DynamicsState, device: torch.device | str) -> DynamicsState:
    """The state with its models and Adam moments on ``device``."""
    moved = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            value = value.to(device)
        elif f.name == "adam":  # the logged steps stay on the CPU
            value = {k: v.to(device) for k, v in value.items()}
        moved[f.name] = value
    return DynamicsState(**moved)


def dynamics_study(config: DynamicsConfig, data: MnistData, device: str) -> Study:
    """The epochs of ``config`` on ``data`` as a :class:`Study` (units 1..student_epochs).

    Returns:
        The study.

    """
    resolved = resolve_device(device)
    moved: dict[str, MnistData] = {}  # the data on the device; "read": tables were read
    tables: dict[int, list[Row]] = {}

    def run_unit(epoch: int, context: Context) -> list[Row]:
        path = context.out / STATE_NAME
        state = _load_state(path) if path.is_file() else None
        if state is not None and state.epoch >= epoch:
            return epoch_rows(config, state, epoch)
        if "read" not in moved:  # before the first report rewrites the tables
            tables.update(table_rows(context.out, config))
            moved["read"] = data
        if state is None and epoch in tables:
            context.log(f"epoch {epoch}: read from the folder's steps.csv and accuracy.csv")
            return tables[epoch]
        if "data" not in moved:
            moved["data"] = data.to(context.device)
        if state is None:
            context.log(f"teachers: {config.models} models, data {data.source}")
            state = start_state(config, moved["data"])
            _save_state(path, _to(state, "cpu"))
        state = _to(state, context.device)
        while state.epoch < epoch:
            state = train_epoch(config, moved["data"], state, context.log)
            _save_state(path, _to(state, "cpu"))
        return epoch_rows(config, _to(state, "cpu"), epoch)

    def report(out: Path, rows: list[Row]) -> str:
        return write_reports(out, rows)

    return Study(
        "dynamics",
        {**asdict(config), "data": data.describe(), "device": resolved.type},
        list(range(1, config.student_epochs + 1)),
        run_unit,
        report,
        grid={},
        unit_file=lambda epoch: f"epoch-{epoch}.json",
    )


FLAG_FIELDS = ("models", "student_epochs", "noise_images", "trait_digits", "seed")


def resolve_config(
    config_file: Path | None, flags: Mapping[str, object], mnist_dir: Path | None = None
) -> tuple[DynamicsConfig, Path | None]:
    """``DynamicsConfig`` defaults < the TOML config < the flags given (``None``: not given).

    Args:
        config_file: the TOML config (``DynamicsConfig`` field names and ``mnist_dir``), or None.
        flags: values of :data:`FLAG_FIELDS` by name; None where not given.
        mnist_dir: ``--mnist-dir`` (wins over the config's ``mnist_dir``).

    Returns:
        ``(the config, the digits' folder or None for the embedded digits)``.

    Raises:
        InputError: an unreadable or invalid config, or a ``mnist_dir`` that is not a string.

    """
    raw: dict[str, object] = {}
    if config_file is not None:
        raw = dict(load_toml(config_file))
    stored_dir = raw.pop("mnist_dir", None)
    if stored_dir is not None and not isinstance(stored_dir, str):
        raise InputError(f"{config_file}: mnist_dir must be a string, got {stored_dir!r}")
    if raw.get("teacher_epochs") == "auto":
        del raw["teacher_epochs"]
    for name in FLAG_FIELDS:
        if flags.get(name) is not None:
            raw[name] = flags[name]
    source = f"{config_file} + command-line flags" if config_file else "command-line flags"
    config = parse_config(DynamicsConfig, raw, source)
    folder = mnist_dir if mnist_dir is not None else stored_dir
    return config, None if folder is None else Path(folder)


def run_dynamics(
    config: DynamicsConfig,
    mnist_dir: Path | None,
    out: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    config_file: str | Path | None = None,
    log: Callable[..., None] = progress,
) -> str:
    """Train (or resume) every epoch not yet stored in ``out``; rebuild and return the table.

    The folder is probed and its lock tried before the digits are read (a busy folder is
    refused at once); ``run_study`` then holds it for the run. ``state.pt`` is deleted once
    every epoch is stored.

    Returns:
        The markdown table.

    Raises:
        InputError: a bad device, data folder or output folder (before any training), or a full
            disk (the finished epochs are kept).

    """
    resolve_device(device)
    with OutputFolder(out, "dynamics"):
        pass
    data = load_mnist(mnist_dir)
    if config.trait_digits > len(data.train_labels):
        raise InputError(
            f"trait_digits = {config.trait_digits} exceeds the {len(data.train_labels)} training "
            f"digits; use --trait-digits {len(data.train_labels)} or fewer"
        )
    study = dynamics_study(config, data, device)
    table = run_study(study, out, device=device, threads=threads, config_file=config_file, log=log)
    (Path(out) / STATE_NAME).unlink(missing_ok=True)
    return table
