"""The one-step sweep over update rules x parameterizations (full, LoRA rank r) x placements.

theory/optimizers.md. For every zoo architecture, teacher kind and seed, each cell measures one
student step with :func:`sublim_theory.engine.rule_report.report_rule`: the exact step of the student's
rule, its first-order prediction, cosines with v and with K v, and the exact and first-order
trait-loss change. Axes:

* rules (``STUDENT_RULES``): ``sgd``; ``momentum`` (fresh buffer: its first step IS the sgd
  step, a check); ``momentum_warm`` and ``adam_warm`` (state warmed on ``warm_steps``
  minibatch gradients of an unrelated pre-training task at theta_S0, the parameters kept
  there: :func:`sublim_theory.engine.update_rules.warmed_state`); ``adam`` (fresh: Adam's first step);
  ``signsgd``;
* parameterizations: ``full`` or ``lora<r>`` (``add_lora`` on every Linear layer, scale 1,
  B0 = 0, A0 from an adapter seed; everything in adapter space). A rank above a layer's
  smallest dimension is allowed (``beyond_full_rank``): that layer's adapter is full-rank, so
  the rank trend up to lora64 shows the adapter-space geometry, not a reach restriction;
* placements: ``shared`` (same base, same A0), ``other_adapter_seed`` (LoRA only: A0 redrawn
  with ``redraw_adapters``), ``independent`` (another base: full, theta_S0 = an independent
  init; LoRA, the same adapters on an independent base, whose first-order prediction does not
  apply and is NaN);
* teachers: ``gradient`` (v = -grad L_T) or ``adam`` (v = the displacement after
  ``teacher_adam_steps`` Adam steps on L_T).

A job is one (architecture, parameterization, placement); a unit is one (job, seed), whose rows
are appended to ``rules.csv`` with an end-of-unit marker in one durable write
(``harness.store.CsvAppendStore``; :mod:`sublim_theory.studies.rules.study` runs the units), so a
killed run, a full disk or a cut file resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sublim_theory.engine.alignment import TeacherTask
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora, redraw_adapters
from sublim_theory.engine.losses import LOSSES, make_loss
from sublim_theory.engine.rule_report import report_rule, student_gradients, teacher_direction
from sublim_theory.engine.update_rules import UpdateRule, make_rule, warmed_state
from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.harness.store import is_marker
from sublim_theory.models.architectures import ARCHITECTURES
from sublim_theory.studies.init_distance.config import MAX_SEEDS, ModelSettings
from sublim_theory.studies.init_distance.measure import teacher_cross_entropy
from sublim_theory.testbeds.zoo import (
    INDEPENDENT_SEED_OFFSET,
    STUDENT_DATA_SEED_OFFSET,
    TEACHER_DATA_SEED_OFFSET,
    build_network,
    make_sweep_inputs,
)

__all__ = [
    "ADAPTER_SEED_OFFSET",
    "DEFAULT_RULES_CONFIG",
    "OTHER_ADAPTER_SEED_OFFSET",
    "PLACEMENT_KINDS",
    "COLUMNS",
    "RULES_TABLE",
    "STUDENT_RULES",
    "TEACHER_KINDS",
    "WARM_DATA_SEED_OFFSET",
    "RuleGrid",
    "RuleSettings",
    "RuleSweepConfig",
    "expand_rule_jobs",
    "format_cells",
    "load_rules_config",
    "parse_parameterization",
    "parse_rules_rows",
    "read_rules_table",
    "run_rule_job_seed",
]

DEFAULT_RULES_CONFIG = runs.CONFIG_DIR / "rules_default.toml"
RULES_TABLE = "rules.csv"
STUDENT_RULES = ("sgd", "momentum", "momentum_warm", "adam", "adam_warm", "signsgd")
PLACEMENT_KINDS = ("shared", "other_adapter_seed", "independent")
TEACHER_KINDS = ("gradient", "adam")
ADAPTER_SEED_OFFSET = OFFSETS["rules.adapter"]
OTHER_ADAPTER_SEED_OFFSET = OFFSETS["rules.other_adapter"]
WARM_DATA_SEED_OFFSET = OFFSETS["rules.warm_data"]
IDENTITY_COLUMNS = (
    "key",
    "arch",
    "parameterization",
    "rank",
    "placement",
    "teacher",
    "student_rule",
    "seed",
)
REPORT_COLUMNS = (
    "rule",
    "lr",
    "eps",
    "num_params",
    "init_distance_abs",
    "norm_step",
    "norm_prediction",
    "norm_teacher",
    "norm_K_v",
    "cos_step_teacher",
    "cos_step_K_v",
    "cos_step_prediction",
    "cos_prediction_teacher",
    "cos_prediction_K_v",
    "prediction_residual",
    "sign_agreement",
    "teacher_loss_change_exact",
    "teacher_loss_change_first_order",
    "teacher_loss_change_control",
    "teacher_loss_change_vs_control",
    "cos_signal_teacher",
    "cos_signal_K_v",
)
COLUMNS = (*IDENTITY_COLUMNS, *REPORT_COLUMNS, "trait_falls", "trait_falls_vs_control")
# Upper bounds of the config (issue 24): far above any useful run, below a MemoryError or an
# overflow. A step size above 1e6 overflows the tiny networks' outputs at once; 10**6 inputs
# or 10**5 steps of these per-example kernels would run for days.
MAX_RATE = 1e6
MAX_INPUTS = 1_000_000
MAX_STEPS = 100_000
TEXT = frozenset(
    {"key", "arch", "parameterization", "placement", "teacher", "student_rule", "rule"}
)
INTEGERS = frozenset({"rank", "seed", "num_params"})


@dataclass(frozen=True)
class RuleGrid:
    """``[grid]``: architectures, rules, parameterizations, placements, teachers, seeds."""

    architectures: tuple[str, ...]
    rules: tuple[str, ...]
    parameterizations: tuple[str, ...]
    placements: tuple[str, ...]
    teachers: tuple[str, ...]
    seeds: tuple[int, ...] = field(metadata=runs.bound(ge=0, lt=2**31))


@dataclass(frozen=True)
class RuleSettings:
    """``[measure]``: the teacher's step, data sizes, each rule's learning rate, warming."""

    eps: float = field(default=1e-3, metadata=runs.bound(gt=0, le=MAX_RATE))
    loss: str = "softmax_ce"
    n_inputs: int = field(default=64, metadata=runs.bound(ge=1, le=MAX_INPUTS))
    n_teacher_inputs: int = field(default=64, metadata=runs.bound(ge=1, le=MAX_INPUTS))
    sgd_lr: float = field(default=1.0, metadata=runs.bound(gt=0, le=MAX_RATE))
    momentum: float = field(default=0.9, metadata=runs.bound(ge=0, lt=1))
    adam_lr: float = field(default=1e-3, metadata=runs.bound(gt=0, le=MAX_RATE))
    signsgd_lr: float = field(default=1e-3, metadata=runs.bound(gt=0, le=MAX_RATE))
    warm_steps: int = field(default=10, metadata=runs.bound(ge=1, le=MAX_STEPS))
    warm_batch: int = field(default=16, metadata=runs.bound(ge=1, le=MAX_INPUTS))
    teacher_adam_steps: int = field(default=10, metadata=runs.bound(ge=1, le=MAX_STEPS))
    teacher_adam_lr: float = field(default=1e-3, metadata=runs.bound(gt=0, le=MAX_RATE))


@dataclass(frozen=True)
class RuleSweepConfig:
    """A whole rules-sweep config (``[grid]``, ``[model]``, ``[measure]``)."""

    grid: RuleGrid
    model: ModelSettings = ModelSettings()
    measure: RuleSettings = RuleSettings()

    def settings(self) -> dict[str, Any]:
        """Every non-grid setting (a run's identity)."""
        return {"model": asdict(self.model), "measure": asdict(self.measure)}


def parse_parameterization(name: str) -> int:
    """The LoRA rank of ``lora<r>`` (0 for ``full``).

    Returns:
        The rank.

    Raises:
        InputError: a name that is neither ``full`` nor ``lora<r>`` with r >= 1.

    """
    if name == "full":
        return 0
    match = re.fullmatch(r"lora([1-9][0-9]*)", name)
    if not match:
        raise InputError(f"unknown parameterization '{name}'; use 'full' or 'lora<r>' (lora4)")
    return int(match.group(1))


def load_rules_config(path: str | os.PathLike[str]) -> RuleSweepConfig:
    """Read and validate a rules-sweep config (TOML); one-line InputError on any problem.

    Returns:
        The config.

    Raises:
        InputError: a missing table or key, an unknown name, a repeated value.

    """
    raw, source = runs.load_toml(path), str(path)
    grid = raw.get("grid")
    if not isinstance(grid, dict):
        raise InputError(f"{source}: missing [grid] table (architectures, rules, ...)")
    if type(grid.get("seeds")) is int:
        if not 1 <= grid["seeds"] <= MAX_SEEDS:
            raise InputError(
                f"{source}: grid.seeds = {grid['seeds']}; give a count from 1 to {MAX_SEEDS}"
            )
        raw = {**raw, "grid": {**grid, "seeds": list(range(grid["seeds"]))}}
    config = runs.parse_config(RuleSweepConfig, raw, source)
    choices = {
        "architectures": ARCHITECTURES,
        "rules": STUDENT_RULES,
        "placements": PLACEMENT_KINDS,
        "teachers": TEACHER_KINDS,
    }
    for name, allowed in choices.items():
        values = getattr(config.grid, name)
        unknown = [x for x in values if x not in allowed]
        if unknown:
            raise InputError(f"{source}: grid.{name} has {unknown}; choose from {list(allowed)}")
    if len(config.grid.seeds) > MAX_SEEDS:
        raise InputError(f"{source}: grid.seeds lists more than {MAX_SEEDS} seeds")
    for name in (*choices, "parameterizations", "seeds"):
        values = getattr(config.grid, name)
        if len(set(values)) != len(values):
            raise InputError(f"{source}: grid.{name} repeats a value: {list(values)}")
    for name in config.grid.parameterizations:
        parse_parameterization(name)
    if config.measure.loss not in LOSSES:
        raise InputError(f"{source}: unknown loss '{config.measure.loss}'; {sorted(LOSSES)}")
    return config


def expand_rule_jobs(config: RuleSweepConfig) -> list[dict[str, Any]]:
    """One job per (architecture, parameterization, placement).

    ``full`` x ``other_adapter_seed`` is skipped: there is no adapter to redraw.

    Returns:
        Plain job dicts in a fixed order.

    """
    settings = config.settings()
    print_key = runs.fingerprint(settings)
    jobs = []
    for arch in config.grid.architectures:
        for parameterization in config.grid.parameterizations:
            for placement in config.grid.placements:
                if parameterization == "full" and placement == "other_adapter_seed":
                    continue
                jobs.append(
                    {
                        "key": f"{arch}|{parameterization}|{placement}|{print_key}",
                        "arch": arch,
                        "parameterization": parameterization,
                        "placement": placement,
                        "teachers": list(config.grid.teachers),
                        "rules": list(config.grid.rules),
                        **settings,
                    }
                )
    return jobs


def _student_rule(name: str, measure: dict[str, Any]) -> UpdateRule:
    if name == "sgd":
        return make_rule("sgd", measure["sgd_lr"])
    if name.startswith("momentum"):
        return make_rule("momentum", measure["sgd_lr"], momentum=measure["momentum"])
    if name.startswith("adam"):
        return make_rule("adam", measure["adam_lr"])
    return make_rule("signsgd", measure["signsgd_lr"])


def _task(arch: str, model: dict, n: int, seed: int, classes: int) -> TeacherTask:
    inputs = make_sweep_inputs(arch, model, n, seed, "gaussian", torch.float64)
    labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))
    return TeacherTask(teacher_cross_entropy, inputs, labels)


def _warm_gradients(
    student: FunctionalModel, theta: Tensor, job: dict[str, Any], seed: int
) -> list[Tensor]:
    """Minibatch gradients of an unrelated pre-training task (random labels) at theta_S0."""
    measure = job["measure"]
    classes = job["model"]["out_features"]
    gradients = []
    for step in range(measure["warm_steps"]):
        task = _task(job["arch"], job["model"], measure["warm_batch"], seed + step, classes)
        gradients.append(task.gradient(student, theta))
    return gradients


def _models(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """The teacher's model and theta_0, and the student's model and theta_S0, of one seed."""
    arch, model = job["arch"], job["model"]
    base = build_network(arch, model, seed, torch.float64)
    rank, placement = parse_parameterization(job["parameterization"]), job["placement"]
    other_base = (
        build_network(arch, model, seed + INDEPENDENT_SEED_OFFSET, torch.float64)
        if placement == "independent"
        else None
    )
    if rank == 0:
        teacher = FunctionalModel(base)
        theta0 = teacher.flat_params()
        start = FunctionalModel(other_base).flat_params() if other_base is not None else theta0
        return {"model": teacher, "theta0": theta0, "student_init": start, "student_model": None}
    # lora16/lora64 on width-16 nets are above some layers' size on purpose: full-rank there
    adapted = add_lora(base, rank, seed=seed + ADAPTER_SEED_OFFSET, beyond_full_rank=True)
    teacher = FunctionalModel(adapted)
    theta0 = teacher.flat_params()
    student_model, start = None, theta0
    if placement == "other_adapter_seed":
        redrawn = redraw_adapters(adapted, seed + OTHER_ADAPTER_SEED_OFFSET)
        start = FunctionalModel(redrawn).flat_params()
    elif placement == "independent":
        other = add_lora(other_base, rank, seed=seed + ADAPTER_SEED_OFFSET, beyond_full_rank=True)
        student_model = FunctionalModel(other)
        start = student_model.flat_params()
    return {
        "model": teacher,
        "theta0": theta0,
        "student_init": start,
        "student_model": student_model,
    }


def run_rule_job_seed(job: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Every (teacher, rule) row of one job and seed (deterministic in the job and seed).

    Returns:
        Plain row dicts with :data:`COLUMNS`.

    """
    arch, model_settings, measure = job["arch"], job["model"], job["measure"]
    built = _models(job, seed)
    model, theta0 = built["model"], built["theta0"]
    student = built["student_model"] or model
    theta_s0 = built["student_init"]
    classes = model_settings["out_features"]
    task = _task(
        arch, model_settings, measure["n_teacher_inputs"], seed + TEACHER_DATA_SEED_OFFSET, classes
    )
    inputs = make_sweep_inputs(
        arch,
        model_settings,
        measure["n_inputs"],
        seed + STUDENT_DATA_SEED_OFFSET,
        "uniform",
        torch.float64,
    )
    loss = make_loss(measure["loss"])
    warm = (
        _warm_gradients(student, theta_s0, job, seed + WARM_DATA_SEED_OFFSET)
        if any(r.endswith("_warm") for r in job["rules"])
        else []
    )
    rank = parse_parameterization(job["parameterization"])
    rows = []
    for teacher_kind in job["teachers"]:
        if teacher_kind == "gradient":
            v = teacher_direction(model, theta0, task)
        else:
            steps, lr = measure["teacher_adam_steps"], measure["teacher_adam_lr"]
            v = teacher_direction(model, theta0, task, "adam", steps=steps, lr=lr)
        gradients = student_gradients(
            model,
            v,
            inputs,
            loss,
            measure["eps"],
            theta0=theta0,
            student_init=theta_s0,
            student_model=built["student_model"],
        )
        for name in job["rules"]:
            rule = _student_rule(name, measure)
            state = warmed_state(rule, theta_s0, warm) if name.endswith("_warm") else None
            report = report_rule(gradients, rule, state, task).to_dict()
            change = report["teacher_loss_change_exact"]
            versus = report["teacher_loss_change_vs_control"]
            rows.append(
                {
                    "key": job["key"],
                    "arch": arch,
                    "parameterization": job["parameterization"],
                    "rank": rank,
                    "placement": job["placement"],
                    "teacher": teacher_kind,
                    "student_rule": name,
                    "seed": seed,
                    **report,
                    "trait_falls": None if change is None else float(change < 0),
                    "trait_falls_vs_control": None if versus is None else float(versus < 0),
                }
            )
    return rows


def format_cells(row: dict[str, Any]) -> dict[str, str]:
    """A row as the cell text of ``rules.csv``: floats by ``repr`` (exact), None as empty."""
    cells = {}
    for column in COLUMNS:
        value = row.get(column)
        cells[column] = (
            "" if value is None else repr(value) if isinstance(value, float) else str(value)
        )
    return cells


def parse_rules_rows(
    records: Iterable[tuple[int, Sequence[str]]], where: str
) -> list[dict[str, Any]]:
    """Rows of cell text (in :data:`COLUMNS` order) with numbers parsed (empty cells -> NaN).

    Args:
        records: ``(line number, cells)`` per row.
        where: the file, for messages.

    Returns:
        The rows as dicts.

    Raises:
        InputError: a row of the wrong width, or a cell that is not a number.

    """
    parsed = []
    for number, cells in records:
        if len(cells) != len(COLUMNS):
            raise InputError(f"'{where}' line {number} is incomplete; rerun into the same --out")
        row = {}
        for column, cell in zip(COLUMNS, cells):
            try:
                if column in TEXT:
                    row[column] = cell
                elif column in INTEGERS:
                    row[column] = int(cell)
                else:
                    row[column] = float(cell) if cell else float("nan")
            except ValueError:
                raise InputError(
                    f"'{where}' line {number}: {column} = {cell!r} is not a number"
                ) from None
        parsed.append(row)
    return parsed


def read_rules_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``rules.csv`` as dicts with numbers parsed (empty cells -> NaN); marker rows skipped.

    Returns:
        The rows.

    Raises:
        InputError: no table, other columns, or a cell that is not a number.

    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no rules table at '{path}'; run `sublim-theory rules` first")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows or rows[0] != list(COLUMNS):
        raise InputError(
            f"'{path}' does not have the rules sweep's columns; rerun into a new --out"
        )
    numbered = [(n, cells) for n, cells in enumerate(rows[1:], start=2) if not is_marker(cells)]
    return parse_rules_rows(numbered, str(path))
