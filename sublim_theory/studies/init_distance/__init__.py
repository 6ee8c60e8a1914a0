"""Resumable sweeps of alignment over architectures x student placements x distances x eps x seeds.

theory/alignment.md section 5. One module per concern:

- ``config``: the TOML config as frozen dataclasses, its validation, the jobs it expands to;
- ``problems``: seeded models, student placements and data of one configuration;
- ``measure``: the engine's kernels vmapped over seeds, the per-seed statistics as the engine
  forms them, the trajectories;
- ``table``: ``sweep.csv`` (columns, cell text, markers, strict reading);
- ``progress``: the progress bar and the environment record;
- ``executors``: local and Ray;
- ``run``: :func:`sweep_study` (the study: one unit per configuration, a CSV-append store) and
  :func:`run_sweep`, which runs it with ``harness.study.run_study``.
"""

from sublim_theory.studies.init_distance.config import (
    CONFIG_DIR,
    DEFAULT_CONFIG,
    SWEEP_ARCHITECTURES,
    TINY_CONFIG,
    SweepConfig,
    configuration_key,
    expand_jobs,
    load_config,
    rows_per_job,
    rows_per_seed,
    validate_config,
    wants_trajectory,
)
from sublim_theory.studies.init_distance.executors import EXECUTORS, run_local, run_ray
from sublim_theory.studies.init_distance.measure import (
    one_step_function,
    run_configuration,
    run_over_seeds,
    seed_statistics,
)
from sublim_theory.studies.init_distance.progress import ProgressBar
from sublim_theory.studies.init_distance.run import run_sweep, sweep_study
from sublim_theory.studies.init_distance.table import (
    COLUMNS,
    ENVIRONMENT_NAME,
    TABLE_NAME,
    completed_seeds,
    format_rows,
    read_table,
)
from sublim_theory.testbeds.zoo import Problem, build_network, prepare_configuration

__all__ = [
    "COLUMNS",
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
    "ENVIRONMENT_NAME",
    "EXECUTORS",
    "SWEEP_ARCHITECTURES",
    "TABLE_NAME",
    "TINY_CONFIG",
    "Problem",
    "ProgressBar",
    "SweepConfig",
    "build_network",
    "completed_seeds",
    "configuration_key",
    "expand_jobs",
    "format_rows",
    "load_config",
    "one_step_function",
    "prepare_configuration",
    "read_table",
    "rows_per_job",
    "rows_per_seed",
    "run_configuration",
    "run_local",
    "run_over_seeds",
    "run_ray",
    "run_sweep",
    "seed_statistics",
    "sweep_study",
    "validate_config",
    "wants_trajectory",
]
