"""The sweep's configuration: a TOML file read into frozen dataclasses, and the jobs it expands to.

Layout: ``[grid]`` with ``architectures``, ``eps``, ``seeds`` (a list, or a count n meaning 0..n-1)
and a ``[grid.placements]`` table mapping placement kinds to their scales; optional ``[model]``,
``[measure]``, ``[trajectory]`` tables override the defaults below. Types and ranges are enforced
by ``runs.parse_config``; the cross-field rules (known architectures, unique values, t <= 1) here.

A configuration is one (architecture, placement, scale, eps); its seeds are batched. The key of a
configuration names it and the fingerprint of every non-grid setting, so rows of two different
model sizes or losses can never share a key.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from sublim_theory.engine.losses import LOSSES
from sublim_theory.engine.placements import PLACEMENTS
from sublim_theory.engine.trajectories import OPTIMIZERS
from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.models.architectures import ARCHITECTURES

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
    "MAX_SEEDS",
    "SWEEP_ARCHITECTURES",
    "TINY_CONFIG",
    "UNSCALED_PLACEMENTS",
    "Grid",
    "MeasureSettings",
    "ModelSettings",
    "PlacementGrid",
    "Scales",
    "SweepConfig",
    "TrajectorySettings",
    "configuration_key",
    "expand_jobs",
    "load_config",
    "rows_per_job",
    "rows_per_seed",
    "validate_config",
    "wants_trajectory",
]

SWEEP_ARCHITECTURES = (*ARCHITECTURES, "gpt2")
CONFIG_DIR = runs.CONFIG_DIR
DEFAULT_CONFIG = CONFIG_DIR / "init_distance.toml"
TINY_CONFIG = CONFIG_DIR / "init_distance_tiny.toml"
# The most seeds a config may list (issue 24: ``seeds = 10**12`` was a MemoryError); the sizes
# below are bounded likewise, far above any useful run.
MAX_SEEDS = 10_000
MAX_SIZE = 100_000
# Placements whose scale is not used (the value in the config is recorded as given).
UNSCALED_PLACEMENTS = ("shared", "independent", "share_body", "share_head")

Scales = tuple[float, ...] | None


@dataclass(frozen=True)
class PlacementGrid:
    """``[grid.placements]``: the scales of each placement kind (a kind left out is not run).

    Scales are sigma (``noise``), s (``scaled_noise``), t in [0, 1] (``interpolate``); the other
    kinds ignore theirs. Configurations run in the order of ``PLACEMENTS``.
    """

    shared: Scales = None
    noise: Scales = None
    scaled_noise: Scales = None
    interpolate: Scales = None
    independent: Scales = None
    share_body: Scales = None
    share_head: Scales = None

    def items(self) -> list[tuple[str, tuple[float, ...]]]:
        """(kind, scales) for the kinds given, in ``PLACEMENTS`` order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class Grid:
    """``[grid]``: what varies between configurations."""

    architectures: tuple[str, ...]
    eps: tuple[float, ...] = field(metadata=runs.bound(gt=0))
    seeds: tuple[int, ...] = field(metadata=runs.bound(ge=0, lt=2**31))
    placements: PlacementGrid


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: the sizes every architecture is built with."""

    out_features: int = field(default=10, metadata=runs.bound(ge=1, le=MAX_SIZE))
    in_features: int = field(default=8, metadata=runs.bound(ge=1, le=MAX_SIZE))
    width: int = field(default=16, metadata=runs.bound(ge=1, le=MAX_SIZE))
    depth: int = field(default=2, metadata=runs.bound(ge=1, le=1_000))
    image_size: int = field(default=8, metadata=runs.bound(ge=1, le=1_024))
    vocab_size: int = field(default=16, metadata=runs.bound(ge=1, le=MAX_SIZE))
    seq_len: int = field(default=6, metadata=runs.bound(ge=1, le=MAX_SIZE))


@dataclass(frozen=True)
class MeasureSettings:
    """``[measure]``: the one-step measurement (loss, dtype, data sizes, the student's step)."""

    loss: str = "softmax_ce"
    dtype: Literal["float64", "float32"] = "float64"
    n_inputs: int = field(default=64, metadata=runs.bound(ge=1, le=10 * MAX_SIZE))
    n_teacher_inputs: int = field(default=64, metadata=runs.bound(ge=1, le=10 * MAX_SIZE))
    input_distribution: Literal["uniform", "gaussian"] = "uniform"
    student_lr: float = field(default=1.0, metadata=runs.bound(gt=0))
    batching: Literal["vmap", "loop"] = "vmap"


@dataclass(frozen=True)
class TrajectorySettings:
    """``[trajectory]``: multi-step runs; ``placements``/``eps`` pick the configurations (None: all)."""

    steps: int = field(default=10, metadata=runs.bound(ge=0, le=MAX_SIZE))
    optimizers: tuple[str, ...] = ("sgd", "adam")
    sgd_lr: float = field(default=0.1, metadata=runs.bound(gt=0))
    adam_lr: float = field(default=1e-5, metadata=runs.bound(gt=0))
    placements: tuple[str, ...] | None = None
    eps: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep config."""

    grid: Grid
    model: ModelSettings = ModelSettings()
    measure: MeasureSettings = MeasureSettings()
    trajectory: TrajectorySettings = TrajectorySettings()

    def settings(self) -> dict[str, Any]:
        """Every non-grid setting, as plain JSON-able data (what a run's identity is made of)."""
        return {
            "model": asdict(self.model),
            "measure": asdict(self.measure),
            "trajectory": asdict(self.trajectory),
        }

    def grid_values(self) -> dict[str, list]:
        """The grid as lists of values (``OutputFolder.check_settings`` lets a rerun add to them)."""
        return {
            "architectures": list(self.grid.architectures),
            "placements": [
                f"{k}={s!r}" for k, scales in self.grid.placements.items() for s in scales
            ],
            "eps": list(self.grid.eps),
            "seeds": list(self.grid.seeds),
        }


def load_config(path: str | os.PathLike[str]) -> SweepConfig:
    """Read and validate a sweep config (TOML); InputError (one line) on any problem."""
    return validate_config(runs.load_toml(path), source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> SweepConfig:
    """Build a :class:`SweepConfig` from a dict as parsed from TOML; InputError on bad input."""
    grid = raw.get("grid")
    if not isinstance(grid, dict):
        raise InputError(f"{source}: missing [grid] table (architectures, placements, eps, seeds)")
    seeds = grid.get("seeds")
    if type(seeds) is int:  # a count n: seeds 0..n-1
        if not 1 <= seeds <= MAX_SEEDS:
            raise InputError(
                f"{source}: grid.seeds = {seeds}; give a count from 1 to {MAX_SEEDS} or a list "
                "of ints"
            )
        raw = {**raw, "grid": {**grid, "seeds": list(range(seeds))}}
    config = runs.parse_config(SweepConfig, raw, source)
    _check(config, source)
    return config


def _unique(values: tuple, what: str, source: str) -> None:
    if len(set(values)) != len(values):
        raise InputError(f"{source}: {what} repeats a value: {list(values)}")


def _check(config: SweepConfig, source: str) -> None:
    """The rules a field's type cannot say: known names, unique values, ranges of scales."""
    grid, trajectory = config.grid, config.trajectory
    for arch in grid.architectures:
        if arch not in SWEEP_ARCHITECTURES:
            raise InputError(
                f"{source}: unknown architecture '{arch}'; choose from {list(SWEEP_ARCHITECTURES)}"
            )
    _unique(grid.architectures, "grid.architectures", source)
    _unique(grid.eps, "grid.eps", source)
    _unique(grid.seeds, "grid.seeds", source)
    if len(grid.seeds) > MAX_SEEDS:
        raise InputError(f"{source}: grid.seeds lists more than {MAX_SEEDS} seeds")
    if not grid.placements.items():
        raise InputError(
            f"{source}: grid.placements is empty; map placement kinds to scales, e.g. "
            "shared = [0.0], scaled_noise = [0.01, 0.1]"
        )
    for kind, scales in grid.placements.items():
        _unique(scales, f"grid.placements.{kind}", source)
        for scale in scales:
            if not math.isfinite(scale) or scale < 0:
                raise InputError(
                    f"{source}: placement {kind} has negative distance {scale}; scales are "
                    "sigma, s or t and must be >= 0"
                )
            if kind == "interpolate" and scale > 1:
                raise InputError(f"{source}: interpolation t must lie in [0, 1], got {scale}")
    if config.measure.loss not in LOSSES:
        raise InputError(
            f"{source}: unknown loss '{config.measure.loss}'; choose from {sorted(LOSSES)}"
        )
    for name in trajectory.optimizers:
        if name not in OPTIMIZERS:
            raise InputError(
                f"{source}: unknown optimizer '{name}'; choose from {list(OPTIMIZERS)}"
            )
    for kind in trajectory.placements or ():
        if kind not in PLACEMENTS:
            raise InputError(
                f"{source}: unknown placement '{kind}' in trajectory.placements; choose from "
                f"{list(PLACEMENTS)}"
            )
    if any(not e > 0 for e in trajectory.eps or ()):
        raise InputError(f"{source}: trajectory.eps must list teacher steps > 0")


def configuration_key(
    arch: str, placement: str, scale: float, eps: float, settings_fingerprint: str
) -> str:
    """The id of one configuration in the table (its seeds share it; the seed has its own column).

    It names the grid point and the fingerprint of every non-grid setting that shapes the rows.

    Returns:
        The key.

    """
    return f"{arch}|{placement}|{scale!r}|{eps!r}|{settings_fingerprint}"


def wants_trajectory(trajectory: dict[str, Any], placement: str, eps: float) -> bool:
    """Whether a configuration records trajectories (``trajectory.placements``, ``eps``)."""
    if not trajectory["steps"] or not trajectory["optimizers"]:
        return False
    kinds, steps = trajectory["placements"], trajectory["eps"]
    return (not kinds or placement in kinds) and (not steps or float(eps) in steps)


def rows_per_seed(job: dict[str, Any]) -> int:
    """Rows one seed of a configuration writes: one one-step row and T + 1 per optimizer."""
    trajectory = job["trajectory"]
    rows = 1
    if wants_trajectory(trajectory, job["placement"], job["eps"]):
        rows += len(trajectory["optimizers"]) * (trajectory["steps"] + 1)
    return rows


def rows_per_job(job: dict[str, Any]) -> int:
    """Rows one job writes (all its seeds)."""
    return rows_per_seed(job) * len(job["seeds"])


def expand_jobs(config: SweepConfig, device: str) -> list[dict[str, Any]]:
    """One plain, picklable job dict per configuration (all the grid's seeds), in a fixed order."""
    grid, settings = config.grid, config.settings()
    fingerprint = runs.fingerprint({**settings, "device": device})
    jobs = []
    for arch in grid.architectures:
        for placement, scales in grid.placements.items():
            for scale in scales:
                for eps in grid.eps:
                    jobs.append(
                        {
                            "key": configuration_key(arch, placement, scale, eps, fingerprint),
                            "arch": arch,
                            "placement": placement,
                            "scale": float(scale),
                            "eps": float(eps),
                            "seeds": list(grid.seeds),
                            **settings,
                            "device": device,
                        }
                    )
    return jobs
