"""Resumable sweeps of alignment over architectures x student placements x distances x eps x seeds.

THEORY.md sections 4-5. For each configuration (one architecture, placement kind, placement scale
and teacher step eps; all seeds batched with ``torch.func.vmap``) the sweep measures

* the one-step report of the engine: the exact student update dtheta_S at theta_S0, its cosine
  with the teacher's direction v, and the first-order prediction K(eps v - Delta),
  Delta = theta_S0 - theta_0, K = E_x[J^T M J] (the Gauss-Newton matrix at theta_0);
* the init-distance law: with delta = ||Delta||, d = Delta / delta,

      cos_law = cos(K v, v) / sqrt(1 + (delta / delta_c)^2),   delta_c = eps ||K v|| / ||K d||,

  i.e. delta / delta_c = ||K Delta|| / (eps ||K v||);
* multi-step trajectories (SGD and Adam, ``sublim_theory.trajectories``).

Output (``out_dir``): ``sweep.csv``, a tidy table with one row per configuration x seed x
measurement x step, and ``environment.json`` (package versions, device, git revision, the full
config). Each finished configuration's rows are appended in one write, flushed and fsynced, under
a ``key`` column; rerunning the same command skips keys already present, so a killed sweep
resumes without losing or duplicating rows, and (every configuration being seeded on its own)
the table is identical to an uninterrupted run's.

Executors: each configuration is run by :func:`run_configuration`, a pure top-level function of
a plain dict (picklable), so a distributed executor only has to map it over the pending jobs and
hand the rows back to :func:`run_sweep`'s writer. ``local`` (in-process, in order) is built in.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad

from sublim_theory import records
from sublim_theory.alignment import (
    gauss_newton_kernel,
    second_order_kernel,
    student_update_kernel,
)
from sublim_theory.architectures import ARCHITECTURES, build_model, make_inputs
from sublim_theory.errors import InputError
from sublim_theory.functional import FunctionalModel
from sublim_theory.losses import LOSSES, ImitationLoss, make_loss
from sublim_theory.placements import PLACEMENTS, place_student
from sublim_theory.trajectories import (
    OPTIMIZERS,
    batched_cosine,
    map_over_seeds,
    student_trajectory,
)

try:  # Python >= 3.11; on 3.10 the API-identical backport ``tomli``
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

SWEEP_ARCHITECTURES = (*ARCHITECTURES, "gpt2")
# The configs ship in the repository (experiments/configs), next to the package.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "init_distance.toml"
TINY_CONFIG = CONFIG_DIR / "init_distance_tiny.toml"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
TABLE_NAME = "sweep.csv"
ENVIRONMENT_NAME = "environment.json"
# Seed offsets: the independent init and the data of seed s never collide with another seed's model.
INDEPENDENT_SEED_OFFSET = 1_000_003
STUDENT_DATA_SEED_OFFSET = 2_000_003
TEACHER_DATA_SEED_OFFSET = 3_000_017
# The placement noise must not reuse the init's seed: torch.manual_seed(s) (the init) and
# torch.Generator().manual_seed(s) (the noise) give the same random stream, which correlates
# the noise direction d with theta_0 and biases d^T K v away from zero.
NOISE_SEED_OFFSET = 4_000_037
# Placements whose scale is not used (the value in the config is recorded as given).
UNSCALED_PLACEMENTS = ("shared", "independent", "share_body", "share_head")

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {
        "out_features": 10,
        "in_features": 8,
        "width": 16,
        "depth": 2,
        "image_size": 8,
        "vocab_size": 16,
        "seq_len": 6,
    },
    "measure": {
        "loss": "softmax_ce",
        "dtype": "float64",
        "n_inputs": 64,
        "n_teacher_inputs": 64,
        "input_distribution": "uniform",
        "student_lr": 1.0,
        "batching": "vmap",
    },
    "trajectory": {
        "steps": 10,
        "optimizers": ["sgd", "adam"],
        "sgd_lr": 0.1,
        "adam_lr": 1e-5,
        # which configurations get trajectories: placement kinds and teacher steps ([] = all)
        "placements": [],
        "eps": [],
    },
}
GRID_KEYS = ("architectures", "placements", "eps", "seeds")

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
    # one-step report (measurement == "one_step")
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
    # the init-distance law
    "norm_K_v",
    "norm_K_delta",
    "cos_K_v_teacher",
    "delta_over_delta_c",
    "cos_law",
    # trajectories (measurement in OPTIMIZERS)
    "cos_step_teacher",
    "cos_displacement_teacher",
    "teacher_loss",
    "imitation_loss",
)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a sweep config (TOML); return it with every default filled in.

    Layout: ``[grid]`` with ``architectures``, ``eps``, ``seeds`` (a list, or a count n meaning
    0..n-1) and a ``[grid.placements]`` table mapping each placement kind to its scales;
    optional ``[model]``, ``[measure]``, ``[trajectory]`` tables override ``DEFAULTS``.
    """
    path = Path(path)
    if tomllib is None:
        raise InputError("reading TOML configs on Python 3.10 needs 'tomli': pip install tomli")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"sweep config '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read sweep config '{path}': {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"sweep config '{path}' is not valid TOML: {error}") from None
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check a config dict (as parsed from TOML), fill defaults; InputError on bad input."""
    unknown = set(raw) - {"grid", *DEFAULTS}
    if unknown:
        raise InputError(
            f"{source}: unknown section(s) {sorted(unknown)}; expected [grid], [model], "
            "[measure], [trajectory]"
        )
    config: dict[str, Any] = {}
    for section, defaults in DEFAULTS.items():
        given = raw.get(section, {})
        extra = set(given) - set(defaults)
        if extra:
            raise InputError(
                f"{source}: unknown key(s) {sorted(extra)} in [{section}]; "
                f"allowed: {sorted(defaults)}"
            )
        config[section] = {**defaults, **given}
    config["grid"] = _validate_grid(raw.get("grid"), source)
    _validate_settings(config, source)
    return config


def _validate_grid(grid: Any, source: str) -> dict[str, Any]:
    if not isinstance(grid, dict):
        raise InputError(f"{source}: missing [grid] table (architectures, placements, eps, seeds)")
    extra = set(grid) - set(GRID_KEYS)
    if extra:
        raise InputError(
            f"{source}: unknown key(s) {sorted(extra)} in [grid]; allowed: {GRID_KEYS}"
        )
    missing = [k for k in GRID_KEYS if k not in grid]
    if missing:
        raise InputError(f"{source}: [grid] lacks {missing}")
    architectures = grid["architectures"]
    if not isinstance(architectures, list) or not architectures:
        raise InputError(
            f"{source}: grid.architectures is empty; list at least one of "
            f"{list(SWEEP_ARCHITECTURES)}"
        )
    for arch in architectures:
        if arch not in SWEEP_ARCHITECTURES:
            raise InputError(
                f"{source}: unknown architecture '{arch}'; choose from {list(SWEEP_ARCHITECTURES)}"
            )
    eps = grid["eps"]
    if not isinstance(eps, list) or not eps:
        raise InputError(f"{source}: grid.eps is empty; give at least one teacher step size > 0")
    for value in eps:
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise InputError(
                f"{source}: teacher step eps must be a finite number > 0, got {value!r}"
            )
    seeds = grid["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds:
        raise InputError(f"{source}: grid.seeds is empty; give a count (e.g. 4) or a list of ints")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise InputError(f"{source}: grid.seeds must be non-negative integers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"{source}: grid.seeds repeats a seed: {seeds}")
    placements = grid["placements"]
    if not isinstance(placements, dict) or not placements:
        raise InputError(
            f"{source}: grid.placements is empty; map placement kinds to scales, e.g. "
            "shared = [0.0], scaled_noise = [0.01, 0.1]"
        )
    for kind, scales in placements.items():
        if kind not in PLACEMENTS:
            raise InputError(
                f"{source}: unknown placement '{kind}'; choose from {list(PLACEMENTS)}"
            )
        if not isinstance(scales, list) or not scales:
            raise InputError(f"{source}: grid.placements.{kind} is empty; give a list of scales")
        for scale in scales:
            if not _is_number(scale) or not math.isfinite(scale):
                raise InputError(
                    f"{source}: placement {kind} scale must be a number, got {scale!r}"
                )
            if scale < 0:
                raise InputError(
                    f"{source}: placement {kind} has negative distance {scale}; scales are "
                    "sigma, s or t and must be >= 0"
                )
            if kind == "interpolate" and scale > 1:
                raise InputError(f"{source}: interpolation t must lie in [0, 1], got {scale}")
        if len(set(scales)) != len(scales):
            raise InputError(f"{source}: grid.placements.{kind} repeats a scale: {scales}")
    return {
        "architectures": list(architectures),
        "placements": {k: [float(s) for s in v] for k, v in placements.items()},
        "eps": [float(e) for e in eps],
        "seeds": list(seeds),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_settings(config: dict[str, Any], source: str) -> None:
    for key, value in config["model"].items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{source}: model.{key} must be a positive integer, got {value!r}")
    measure = config["measure"]
    if measure["loss"] not in LOSSES:
        raise InputError(
            f"{source}: unknown loss '{measure['loss']}'; choose from {sorted(LOSSES)}"
        )
    if measure["dtype"] not in DTYPES:
        raise InputError(f"{source}: measure.dtype must be one of {sorted(DTYPES)}")
    if measure["input_distribution"] not in ("uniform", "gaussian"):
        raise InputError(f"{source}: measure.input_distribution must be 'uniform' or 'gaussian'")
    if measure["batching"] not in ("vmap", "loop"):
        raise InputError(f"{source}: measure.batching must be 'vmap' or 'loop'")
    for key in ("n_inputs", "n_teacher_inputs"):
        if not isinstance(measure[key], int) or measure[key] < 1:
            raise InputError(f"{source}: measure.{key} must be a positive integer")
    trajectory = config["trajectory"]
    if not isinstance(trajectory["steps"], int) or trajectory["steps"] < 0:
        raise InputError(f"{source}: trajectory.steps must be an integer >= 0 (0: no trajectory)")
    for kind in trajectory["placements"]:
        if kind not in PLACEMENTS:
            raise InputError(
                f"{source}: unknown placement '{kind}' in trajectory.placements; choose from "
                f"{list(PLACEMENTS)}"
            )
    if not all(_is_number(e) and e > 0 for e in trajectory["eps"]):
        raise InputError(f"{source}: trajectory.eps must list teacher steps > 0")
    trajectory["eps"] = [float(e) for e in trajectory["eps"]]
    for name in trajectory["optimizers"]:
        if name not in OPTIMIZERS:
            raise InputError(
                f"{source}: unknown optimizer '{name}'; choose from {list(OPTIMIZERS)}"
            )
    for key in ("student_lr",):
        if not _is_number(measure[key]) or measure[key] <= 0:
            raise InputError(f"{source}: measure.{key} must be a number > 0")
    for key in ("sgd_lr", "adam_lr"):
        if not _is_number(trajectory[key]) or trajectory[key] <= 0:
            raise InputError(f"{source}: trajectory.{key} must be a number > 0")


def configuration_key(arch: str, placement: str, scale: float, eps: float) -> str:
    """The unique id of one configuration in the table (all its seeds share it)."""
    return f"{arch}|{placement}|{scale!r}|{eps!r}"


def expand_jobs(config: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """One plain, picklable job dict per configuration, in a fixed order."""
    grid = config["grid"]
    jobs = []
    for arch in grid["architectures"]:
        for placement, scales in grid["placements"].items():
            for scale in scales:
                for eps in grid["eps"]:
                    jobs.append(
                        {
                            "key": configuration_key(arch, placement, scale, eps),
                            "arch": arch,
                            "placement": placement,
                            "scale": scale,
                            "eps": eps,
                            "seeds": list(grid["seeds"]),
                            "model": dict(config["model"]),
                            "measure": dict(config["measure"]),
                            "trajectory": dict(config["trajectory"]),
                            "device": device,
                        }
                    )
    return jobs


def wants_trajectory(trajectory: dict[str, Any], placement: str, eps: float) -> bool:
    """Whether a configuration records trajectories (``trajectory.placements``, ``eps``)."""
    if not trajectory["steps"] or not trajectory["optimizers"]:
        return False
    kinds, steps = trajectory["placements"], trajectory["eps"]
    return (not kinds or placement in kinds) and (not steps or float(eps) in steps)


def rows_per_job(job: dict[str, Any]) -> int:
    """Rows one configuration writes: per seed, one one-step row and T + 1 per optimizer."""
    trajectory = job["trajectory"]
    per_seed = 1
    if wants_trajectory(trajectory, job["placement"], job["eps"]):
        per_seed += len(trajectory["optimizers"]) * (trajectory["steps"] + 1)
    return per_seed * len(job["seeds"])


def settings_fingerprint(config: dict[str, Any]) -> str:
    """Hash of everything but the grid: rows from configs with another fingerprint don't mix."""
    settings = {k: config[k] for k in DEFAULTS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# one configuration (the unit an executor runs)
# --------------------------------------------------------------------------------------------
def build_network(arch: str, model: dict[str, Any], seed: int, dtype: torch.dtype) -> nn.Module:
    """A freshly initialized network for the sweep: ``build_model``'s architectures, or ``gpt2``."""
    if arch == "gpt2":
        from sublim_theory.gpt2 import build_gpt2

        vocab = max(model["vocab_size"], model["out_features"])
        return build_gpt2(vocab, model["width"], model["depth"], model["seq_len"], seed, dtype)
    return build_model(
        arch,
        model["out_features"],
        in_features=model["in_features"],
        width=model["width"],
        depth=model["depth"],
        image_size=model["image_size"],
        vocab_size=model["vocab_size"],
        seq_len=model["seq_len"],
        seed=seed,
        dtype=dtype,
    )


@functools.lru_cache(maxsize=512)
def _initial_parameters(arch: str, model_json: str, seed: int, dtype_name: str) -> Tensor:
    """theta_0 of ``build_network`` for one seed, cached: an init recurs in many configurations."""
    module = build_network(arch, json.loads(model_json), seed, DTYPES[dtype_name])
    return FunctionalModel(module).flat_params()


def initial_parameters(arch: str, model: dict[str, Any], seed: int, dtype_name: str) -> Tensor:
    """A fresh copy of the cached theta_0 (callers may not alias the cache)."""
    return _initial_parameters(arch, json.dumps(model, sort_keys=True), seed, dtype_name).clone()


def _inputs(
    arch: str, model: dict[str, Any], n: int, seed: int, distribution: str, dtype: torch.dtype
) -> Tensor:
    if arch == "gpt2":
        vocab = max(model["vocab_size"], model["out_features"])
        return make_inputs("transformer", n, vocab_size=vocab, seq_len=model["seq_len"], seed=seed)
    return make_inputs(
        arch,
        n,
        in_features=model["in_features"],
        image_size=model["image_size"],
        vocab_size=model["vocab_size"],
        seq_len=model["seq_len"],
        distribution=distribution,
        seed=seed,
        dtype=dtype,
    )


def teacher_cross_entropy(outputs: Tensor, labels: Tensor) -> Tensor:
    """The trait L_T: cross-entropy of the outputs against fixed random labels (as ``check``)."""
    return F.cross_entropy(outputs, labels)


def one_step_function(
    model: FunctionalModel, loss: ImitationLoss, eps: float, student_lr: float
) -> Callable[..., dict[str, Tensor]]:
    """The per-seed one-step measurement, a pure function of tensors (vmap-able).

    ``(theta_0, theta_S0, x_student, x_teacher, labels) ->`` v = -grad L_T(theta_0),
    the targets y = f(theta_0 + eps v, x), the exact update dtheta_S = -grad E_x l at theta_S0,
    K v, K Delta (jvp + vjp, M in closed form), B (jvp of jvp), and the teacher losses
    L_T(theta_S0), L_T(theta_S0 + alpha dtheta_S), grad L_T(theta_S0). The update, K q and B
    are the engine's per-batch kernels (``sublim_theory.alignment``), vmapped over seeds.
    """

    def teacher_objective(theta: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return teacher_cross_entropy(model(theta, x), labels)

    def measure(
        theta0: Tensor, theta_s0: Tensor, x_student: Tensor, x_teacher: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        v = -grad(teacher_objective)(theta0, x_teacher, labels)
        targets = model(theta0 + eps * v, x_student).detach()
        exact = student_update_kernel(model, theta_s0, x_student, targets, loss)
        offset = theta_s0 - theta0
        k_v = gauss_newton_kernel(model, theta0, x_student, loss, v)
        k_delta = gauss_newton_kernel(model, theta0, x_student, loss, offset)
        teacher_gradient = grad(teacher_objective)(theta_s0, x_teacher, labels)
        return {
            "v": v,
            "targets": targets,
            "exact": exact,
            "k_v": k_v,
            "k_delta": k_delta,
            "B": second_order_kernel(model, theta0, x_student, loss, v),
            "teacher_loss_start": teacher_objective(theta_s0, x_teacher, labels),
            "teacher_loss_stepped": teacher_objective(
                theta_s0 + student_lr * exact, x_teacher, labels
            ),
            "teacher_gradient": teacher_gradient,
        }

    return measure


def _run_over_seeds(
    function: Callable[..., dict[str, Tensor]],
    arguments: tuple[Tensor, ...],
    prefer_vmap: bool,
    label: str,
) -> tuple[dict[str, Tensor], str]:
    """Run with vmap; where vmap cannot trace the module, say so and loop over seeds instead."""
    if prefer_vmap:
        try:
            return map_over_seeds(function, True)(*arguments), "vmap"
        except Exception as error:  # noqa: BLE001 - any vmap failure means: use the loop
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            warnings.warn(f"{label}: vmap failed ({first[:200]}); looping over seeds", stacklevel=2)
    return map_over_seeds(function, False)(*arguments), "loop"


def _norms(a: Tensor) -> Tensor:
    return torch.linalg.vector_norm(a.double(), dim=-1)


def _inner(a: Tensor, b: Tensor) -> Tensor:
    return (a.double() * b.double()).sum(-1)


def _float(value: Tensor | float) -> float:
    return float(value)


@dataclass
class Problem:
    """The tensors of one configuration, stacked over seeds (axis 0 = seed).

    theta0 (S, P) the inits, theta_student (S, P) the placed students, x_student the
    distillation inputs, x_teacher/labels the trait task, model the shared architecture.
    """

    model: FunctionalModel
    theta0: Tensor
    theta_student: Tensor
    x_student: Tensor
    x_teacher: Tensor
    labels: Tensor


def prepare_configuration(job: dict[str, Any]) -> Problem:
    """Build the seeded models, student placements and data of one job (deterministic)."""
    arch, kind, scale = job["arch"], job["placement"], job["scale"]
    seeds, model_settings, measure = job["seeds"], job["model"], job["measure"]
    dtype, device = DTYPES[measure["dtype"]], torch.device(job["device"])
    template = build_network(arch, model_settings, seeds[0], dtype).to(device)
    model = FunctionalModel(template)
    theta0 = torch.stack(
        [initial_parameters(arch, model_settings, s, measure["dtype"]) for s in seeds]
    ).to(device)
    independent = [
        initial_parameters(arch, model_settings, s + INDEPENDENT_SEED_OFFSET, measure["dtype"]).to(
            device
        )
        for s in seeds
    ]
    theta_s0 = torch.stack(
        [
            place_student(
                model,
                theta0[i],
                kind,
                scale,
                seed=s + NOISE_SEED_OFFSET,
                independent=independent[i],
            )
            for i, s in enumerate(seeds)
        ]
    )
    x_student = torch.stack(
        [
            _inputs(
                arch,
                model_settings,
                measure["n_inputs"],
                s + STUDENT_DATA_SEED_OFFSET,
                measure["input_distribution"],
                dtype,
            )
            for s in seeds
        ]
    ).to(device)
    x_teacher = torch.stack(
        [
            _inputs(
                arch,
                model_settings,
                measure["n_teacher_inputs"],
                s + TEACHER_DATA_SEED_OFFSET,
                "gaussian",
                dtype,
            )
            for s in seeds
        ]
    ).to(device)
    n_classes = model(theta0[0], x_teacher[0, :1]).shape[-1]
    labels = torch.stack(
        [
            torch.randint(
                0,
                n_classes,
                (measure["n_teacher_inputs"],),
                generator=torch.Generator().manual_seed(s + TEACHER_DATA_SEED_OFFSET),
            )
            for s in seeds
        ]
    ).to(device)
    return Problem(model, theta0, theta_s0, x_student, x_teacher, labels)


def run_configuration(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Measure one configuration for all its seeds; return its rows (a list of plain dicts).

    Pure and deterministic: everything is seeded from the job (``build_model`` seeds the init,
    inputs come from their own generators), so any process, in any order, returns the same rows.
    """
    arch, kind, scale, eps = job["arch"], job["placement"], job["scale"], job["eps"]
    seeds, measure, trajectory = job["seeds"], job["measure"], job["trajectory"]
    problem = prepare_configuration(job)
    model, theta0, theta_s0 = problem.model, problem.theta0, problem.theta_student
    x_student, x_teacher, labels = problem.x_student, problem.x_teacher, problem.labels
    loss = make_loss(measure["loss"])
    measure_fn = one_step_function(model, loss, eps, measure["student_lr"])
    step, batching = _run_over_seeds(
        measure_fn,
        (theta0, theta_s0, x_student, x_teacher, labels),
        measure["batching"] == "vmap",
        label=job["key"],
    )

    rows = []
    one_step = _one_step_statistics(step, theta0, theta_s0, eps, measure["student_lr"])
    base = {
        "key": job["key"],
        "arch": arch,
        "placement": kind,
        "scale": scale,
        "eps": eps,
        "dtype": measure["dtype"],
        "loss": loss.describe(),
        "num_params": model.num_params,
        "batching": batching,
    }
    distances = {
        k: one_step[k] for k in ("init_distance_abs", "init_distance_rel", "delta_over_eps")
    }
    for i, s in enumerate(seeds):
        row = {**base, "seed": s, "measurement": "one_step", "step": 1, "lr": measure["student_lr"]}
        row.update({k: _float(values[i]) for k, values in one_step.items()})
        rows.append(row)
    if wants_trajectory(trajectory, kind, eps):
        for optimizer in trajectory["optimizers"]:
            lr = trajectory[f"{optimizer}_lr"]
            records = student_trajectory(
                model,
                loss,
                theta_s0,
                x_student,
                step["targets"],
                step["v"],
                teacher_cross_entropy,
                x_teacher,
                labels,
                optimizer,
                lr,
                trajectory["steps"],
                use_vmap=batching == "vmap",
            )
            for i, s in enumerate(seeds):
                for t in range(trajectory["steps"] + 1):
                    row = {**base, "seed": s, "measurement": optimizer, "step": t, "lr": lr}
                    row.update({k: _float(values[i]) for k, values in distances.items()})
                    row.update({k: _float(values[i, t]) for k, values in records.items()})
                    rows.append(row)
    return rows


def _one_step_statistics(
    step: dict[str, Tensor], theta0: Tensor, theta_s0: Tensor, eps: float, student_lr: float
) -> dict[str, Tensor]:
    """Per-seed scalars of the one-step report and the init-distance law, in float64.

    first = K(eps v - Delta); A = <v, K v>; eps_star = A / |B| if B < 0; delta / delta_c =
    ||K Delta|| / (eps ||K v||); cos_law = cos(K v, v) / sqrt(1 + (delta / delta_c)^2).
    """
    v, exact = step["v"].double(), step["exact"].double()
    k_v, k_delta = step["k_v"].double(), step["k_delta"].double()
    first = eps * k_v - k_delta
    distance = _norms(theta_s0 - theta0)
    a, b = _inner(v, k_v), step["B"].double()
    norm_exact, norm_k_v, norm_k_delta = _norms(exact), _norms(k_v), _norms(k_delta)
    ratio = norm_k_delta / (eps * norm_k_v)
    cos_k_v = batched_cosine(k_v, v)
    inf = torch.full_like(a, math.inf)
    return {
        "init_distance_abs": distance,
        "init_distance_rel": distance / _norms(theta0),
        "delta_over_eps": distance / eps,
        "cos_exact_teacher": batched_cosine(exact, v),
        "cos_first_order_teacher": batched_cosine(first, v),
        "cos_exact_first_order": batched_cosine(exact, first),
        "inner_exact": _inner(exact, v),
        "inner_first_order": _inner(first, v),
        "norm_exact": norm_exact,
        "norm_first_order": _norms(first),
        "norm_teacher": _norms(v),
        "taylor_residual": _norms(exact - first) / norm_exact,
        "A": a,
        "B": b,
        "eps_star": torch.where(b < 0, a / b.abs(), inf),
        "teacher_loss_change_exact": (
            step["teacher_loss_stepped"].double() - step["teacher_loss_start"].double()
        ),
        "teacher_loss_change_first_order": student_lr * _inner(step["teacher_gradient"], first),
        "norm_K_v": norm_k_v,
        "norm_K_delta": norm_k_delta,
        "cos_K_v_teacher": cos_k_v,
        "delta_over_delta_c": ratio,
        "cos_law": cos_k_v / torch.sqrt(1 + ratio**2),
    }


# --------------------------------------------------------------------------------------------
# the table: append atomically, resume
# --------------------------------------------------------------------------------------------
def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_rows(rows: Iterable[dict[str, Any]]) -> str:
    """CSV text (no header) for rows; floats as ``repr`` so they read back bit-identical."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([_format(row.get(column)) for column in COLUMNS])
    return buffer.getvalue()


def append_durably(path: Path, text: str) -> None:
    """Append ``text`` with O_APPEND writes, then fsync: a finished configuration is on disk."""
    data = text.encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            written = os.write(descriptor, data)
            data = data[written:]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def finished_keys(table: Path, expected_rows: dict[str, int]) -> set[str]:
    """Keys of the configurations already complete in ``table``; raise on a damaged table.

    A damaged table (truncated last line, wrong header, a configuration with missing rows) is never
    modified here: the error says which lines to remove so the rerun can resume.
    """
    if not table.exists():
        return set()
    try:
        text = table.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the sweep table '{table}': {error}") from None
    if not text:
        return set()
    lines = text.split("\n")
    if not text.endswith("\n"):
        raise InputError(
            f"'{table}' ends with an incomplete line {len(lines)} (the sweep was killed while "
            f"writing it): delete that last line (e.g. sed -i '$d' {table}) and rerun the same "
            "command; the finished configurations are kept"
        )
    header = lines[0].split(",")
    if header != list(COLUMNS):
        raise InputError(
            f"'{table}' does not have this sweep's columns (another tool or version wrote it): "
            "write to a new --out directory"
        )
    counts: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        if number == 1:
            continue
        if len(fields) != len(COLUMNS):
            raise InputError(
                f"'{table}' line {number} has {len(fields)} fields, expected {len(COLUMNS)}: the "
                "table is corrupt; remove that line and the rows after it, then rerun"
            )
        counts[fields[0]] = counts.get(fields[0], 0) + 1
        first_line.setdefault(fields[0], number)
    for key, count in counts.items():
        if key in expected_rows and count != expected_rows[key]:
            raise InputError(
                f"'{table}': configuration {key} has {count} rows, expected {expected_rows[key]} "
                f"(starting at line {first_line[key]}); remove its rows and rerun to recompute it"
            )
    return set(counts)


def read_table(table: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The sweep table as a list of dicts with numbers parsed (empty cells -> None)."""
    path = Path(table)
    if not path.is_file():
        raise InputError(f"no sweep table at '{path}'; run `sublim-theory sweep` first")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "key" not in reader.fieldnames:
            raise InputError(f"'{path}' is not a sweep table (no 'key' column)")
        return [{k: _parse(k, v) for k, v in row.items()} for row in reader]


_TEXT_COLUMNS = {"key", "arch", "placement", "measurement", "dtype", "loss", "batching"}


def _parse(column: str, value: str | None) -> Any:
    if column in _TEXT_COLUMNS:
        return value
    if value is None or value == "":
        return None
    if column in ("seed", "step", "num_params"):
        return int(value)
    return float(value)


# --------------------------------------------------------------------------------------------
# environment record, progress, executors
# --------------------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was asked for but no CUDA GPU is available; use cpu or auto"
        )
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device '{device}'; choose auto, cpu or cuda")
    return device


def environment_record(
    config: dict[str, Any], config_path: str, device: str, executor: str
) -> dict[str, Any]:
    """What produced the table: versions, device, git revision, the full config, its fingerprint."""
    return records.environment_record(
        device,
        config_path=config_path,
        config=config,
        settings_fingerprint=settings_fingerprint(config),
        executor=executor,
        columns=list(COLUMNS),
    )


def _write_json(path: Path, record: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(temporary, path)


class ProgressBar:
    """``sweep [#####-----] 12/56 configurations, 0:10 elapsed, ~0:37 left`` on stderr."""

    def __init__(self, total: int, done: int, stream: Any = None, width: int = 30) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.started = width, time.monotonic()
        self.show()

    def advance(self) -> None:
        self.done += 1
        self.show()

    def show(self) -> None:
        elapsed = time.monotonic() - self.started
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(self.width * fraction))
        ran = self.done - self.start_done
        left = elapsed / ran * (self.total - self.done) if ran else math.nan
        eta = "?" if math.isnan(left) else _clock(left)
        line = (
            f"sweep [{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total} "
            f"configurations, {_clock(elapsed)} elapsed, ~{eta} left"
        )
        terminal = getattr(self.stream, "isatty", lambda: False)()
        tenth = max(1, self.total // 10)
        if not terminal and self.done < self.total and (self.done - self.start_done) % tenth:
            return  # a log file gets about ten lines, not one per configuration
        end = "" if terminal and self.done < self.total else "\n"
        self.stream.write(("\r" if terminal else "") + line + end)
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def run_local(
    jobs: list[dict[str, Any]], address: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The in-process executor: run each job in order, yield its rows as soon as it finishes."""
    if address is not None:
        raise InputError("--address only applies to --executor ray")
    for job in jobs:
        yield run_configuration(job)


def run_configuration_in_worker(job: dict[str, Any]) -> list[dict[str, Any]]:
    """``run_configuration`` with one torch thread: a worker process is one task of many."""
    torch.set_num_threads(1)
    return run_configuration(job)


def run_ray(
    jobs: list[dict[str, Any]], address: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The Ray executor: every job is a Ray task; rows come back in job order.

    ``address=None`` starts a private local Ray instance bound to 127.0.0.1 (shut down at the
    end); otherwise it joins the cluster at ``address`` (e.g. ``ray://host:10001`` or ``auto``).
    Yielding in submission order (not completion order) makes the table byte-identical to the
    local executor's, and a killed run resumes exactly as a local one does.
    """
    if not jobs:
        return
    try:
        import ray
    except ImportError:
        raise InputError(
            "the 'ray' executor needs Ray: pip install 'sublim-theory[ray]' (or use --executor local)"
        ) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            options["_node_ip_address"] = "127.0.0.1"
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise InputError(
                f"cannot start or reach Ray at {address or 'a local instance'}: {first}"
            ) from None
    try:
        task = ray.remote(run_configuration_in_worker)
        references = [task.remote(job) for job in jobs]
        for reference in references:
            yield ray.get(reference)
    finally:
        if started_here:
            ray.shutdown()


# An executor maps the pending jobs (and an optional cluster address) to an iterator of their
# row lists; both executors yield in job order, so their tables are identical.
EXECUTORS: dict[str, Callable[..., Iterator[list[dict[str, Any]]]]] = {
    "local": run_local,
    "ray": run_ray,
}


def run_sweep(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    device: str = "auto",
    executor: str = "local",
    progress: bool = True,
    cpu_threads: int | None = 1,
    address: str | None = None,
) -> Path:
    """Run (or resume) the sweep of ``config_path`` into ``out_dir``; return the CSV's path.

    Finished configurations already in ``out_dir/sweep.csv`` are skipped; the others run and
    their rows are appended as each finishes. Raises InputError on a bad config, an output
    directory that cannot be written, a damaged table, or a table from different settings.

    ``cpu_threads``: torch intra-op threads while the sweep runs (restored after; None keeps
    torch's setting). The models are tiny, so one thread is fastest, and far faster than two
    on a busy machine where threads wait for each other.

    ``executor``: ``local`` (in process) or ``ray`` (Ray tasks; ``address`` joins an existing
    cluster, None starts a private one on 127.0.0.1). Both give identical tables.
    """
    previous_threads = torch.get_num_threads()
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        return _run_sweep(config_path, out_dir, device, executor, progress, address)
    finally:
        torch.set_num_threads(previous_threads)


def _run_sweep(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    device: str,
    executor: str,
    progress: bool,
    address: str | None = None,
) -> Path:
    config = load_config(config_path)
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor '{executor}'; available: {sorted(EXECUTORS)}")
    device = resolve_device(device)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(
            f"output path '{out}' exists and is not a directory; pick another --out"
        ) from None
    except OSError as error:
        raise InputError(f"cannot create output directory '{out}': {error.strerror}") from None
    if not os.access(out, os.R_OK | os.W_OK | os.X_OK):
        raise InputError(
            f"output directory '{out}' is not readable and writable; pick another --out"
        )
    table, environment = out / TABLE_NAME, out / ENVIRONMENT_NAME
    record = environment_record(config, str(config_path), device, executor)
    if environment.exists() and table.exists():
        try:
            previous = json.loads(environment.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"cannot read '{environment}' ({error}); use a new --out") from None
        if previous.get("settings_fingerprint") != record["settings_fingerprint"]:
            raise InputError(
                f"'{out}' holds a sweep with different [model]/[measure]/[trajectory] settings; "
                "rows would not be comparable: use a new --out directory"
            )
    jobs = expand_jobs(config, device)
    done = finished_keys(table, {job["key"]: rows_per_job(job) for job in jobs})
    pending = [job for job in jobs if job["key"] not in done]
    if not table.exists() or table.stat().st_size == 0:
        append_durably(table, ",".join(COLUMNS) + "\n")
    record["configurations"] = {"total": len(jobs), "already_done": len(jobs) - len(pending)}
    _write_json(environment, record)
    bar = ProgressBar(len(jobs), len(jobs) - len(pending)) if progress else None
    started = time.monotonic()
    modes: set[str] = set()
    for rows in EXECUTORS[executor](pending, address):
        append_durably(table, format_rows(rows))
        modes.update(row["batching"] for row in rows)
        if bar is not None:
            bar.advance()
    record["seconds_this_run"] = round(time.monotonic() - started, 3)
    record["batching_this_run"] = sorted(modes)
    _write_json(environment, record)
    return table
