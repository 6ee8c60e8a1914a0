"""Orchestration: a sweep config and an output folder in, a complete ``sweep.csv`` out.

The folder is locked for the whole run (``runs.OutputFolder``: a second run on it is refused at
once) and its ``run.json`` records every setting that shapes the rows (model, measurement,
trajectories, device) and the grid. A rerun with other settings is refused with the first
difference; a rerun whose grid only adds values (architectures, placements, eps, seeds) computes
the new (configuration, seed) pairs and appends them; an unchanged rerun resumes a killed one.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.studies.init_distance.config import expand_jobs, load_config, rows_per_seed
from sublim_theory.studies.init_distance.executors import DEFAULT_RAY_TIMEOUT, EXECUTORS
from sublim_theory.studies.init_distance.progress import ProgressBar, environment_record
from sublim_theory.studies.init_distance.table import (
    ENVIRONMENT_NAME,
    TABLE_NAME,
    completed_seeds,
    format_rows,
    header,
)

__all__ = [
    "run_sweep",
]


def run_sweep(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    device: str = "auto",
    executor: str = "local",
    progress: bool = True,
    cpu_threads: int | None = 1,
    address: str | None = None,
    ray_timeout: float = DEFAULT_RAY_TIMEOUT,
) -> Path:
    """Run (or resume, or extend) the sweep of ``config_path`` into ``out_dir``; return the CSV.

    Args:
        config_path: the sweep config (TOML), see ``sublim_theory.studies.init_distance.config``.
        out_dir: the output folder (``sweep.csv``, ``run.json``, ``environment.json``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``runs.resolve_device``).
        executor: ``local`` (in process) or ``ray`` (Ray tasks; both give identical tables).
        progress: draw a progress bar on stderr.
        cpu_threads: torch intra-op threads while the sweep runs (restored after; None keeps
            torch's setting). The models are tiny: one thread is fastest on a busy machine.
        address: with ``ray``, the cluster to join (None: a private instance on 127.0.0.1).
        ray_timeout: seconds allowed to reach Ray.

    Returns:
        The path of ``sweep.csv``.

    Raises:
        InputError: a bad config or option, an unusable or busy output folder, a folder holding
            rows of other settings (or a table without its run.json), a damaged table.

    """
    config = load_config(config_path)
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor '{executor}'; available: {sorted(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise InputError("--address only applies to --executor ray")
    if not (
        isinstance(ray_timeout, int | float) and math.isfinite(ray_timeout) and ray_timeout > 0
    ):
        raise InputError(f"--ray-timeout must be a number of seconds > 0, got {ray_timeout!r}")
    device_name = str(runs.resolve_device(device))
    jobs = expand_jobs(config, device_name)
    settings = {**config.settings(), "device": device_name}
    grid = config.grid_values()
    previous_threads = torch.get_num_threads()
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        with runs.OutputFolder(out_dir, "sweep") as folder:
            table = folder.path / TABLE_NAME
            if table.exists() and not (folder.path / runs.RUN_RECORD_NAME).exists():
                raise InputError(
                    f"'{table}' has no {runs.RUN_RECORD_NAME} beside it, so its rows cannot be "
                    "matched to their settings; use a new --out folder (or delete the table)"
                )
            folder.check_settings(settings, grid)
            done = completed_seeds(table, {job["key"]: rows_per_seed(job) for job in jobs})
            pending = []
            for job in jobs:
                seeds = [s for s in job["seeds"] if s not in done.get(job["key"], set())]
                if seeds:
                    pending.append({**job, "seeds": seeds})
            if not table.exists() or table.stat().st_size == 0:
                runs.append_durably(table, header())
            record = environment_record(str(config_path), settings, grid, device_name, executor)
            record["configurations"] = {"total": len(jobs), "pending": len(pending)}
            runs.atomic_write_json(folder.path / ENVIRONMENT_NAME, record)
            bar = ProgressBar(len(jobs), len(jobs) - len(pending)) if progress else None
            started, modes = time.monotonic(), set()
            for rows in EXECUTORS[executor](pending, address, ray_timeout):
                runs.append_durably(table, format_rows(rows))
                modes.update(row["batching"] for row in rows)
                if bar is not None:
                    bar.advance()
            record["seconds_this_run"] = round(time.monotonic() - started, 3)
            record["batching_this_run"] = sorted(modes)
            runs.atomic_write_json(folder.path / ENVIRONMENT_NAME, record)
            return table
    finally:
        torch.set_num_threads(previous_threads)
