"""Orchestration: a sweep config and an output folder in, a complete ``sweep.csv`` out.

The sweep is a :class:`~sublim_theory.harness.study.Study` run by ``run_study``: the folder is
locked, ``run.json`` records every setting that shapes the rows (model, measurement,
trajectories, device) and the grid, and a rerun with other settings is refused with the first
difference. A unit is one configuration (its seeds are batched). Its rows go to ``sweep.csv``
with an end-of-unit marker naming the configuration and the seeds computed, in one durable
write (``CsvAppendStore``): a configuration is done when its markers cover all its seeds, so a
rerun whose grid only adds seeds computes the new ones, and a run killed, cut or stopped by a
full disk recomputes exactly the configuration it lost. Tables written before the markers
existed get them once (:func:`legacy_chunks`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.harness.store import CsvAppendStore
from sublim_theory.harness.study import Study, progress, run_study
from sublim_theory.studies.init_distance.config import expand_jobs, load_config, rows_per_seed
from sublim_theory.studies.init_distance.executors import DEFAULT_RAY_TIMEOUT, EXECUTORS
from sublim_theory.studies.init_distance.progress import environment_record
from sublim_theory.studies.init_distance.table import (
    COLUMNS,
    ENVIRONMENT_NAME,
    TABLE_NAME,
    row_cells,
)

__all__ = [
    "SweepStore",
    "legacy_chunks",
    "run_sweep",
    "sweep_study",
]

Job = dict[str, Any]


def _chunk(key: str, seeds: list[int]) -> str:
    """The marker's unit name of the rows of ``seeds`` of configuration ``key``."""
    return f"{key}#{','.join(map(str, seeds))}"


def _seeds_of(rows: list[dict[str, str]]) -> list[int]:
    return list(dict.fromkeys(int(row["seed"]) for row in rows))


def legacy_chunks(jobs: list[Job], rows: list[dict[str, str]]) -> list[tuple[str, int]]:
    """Split a ``sweep.csv`` without markers into its appends (``store.LegacySplit``).

    The old code appended each configuration's rows (all its pending seeds) in one write: a
    run of rows with one key, ``rows_per_seed`` times its distinct seeds long. A short last run
    is an incomplete configuration, left out.

    Returns:
        ``(chunk, row count)`` per complete append, in file order.

    Raises:
        InputError: a key this config does not produce (other settings: the key ends with
            their fingerprint), or a short run before the last.

    """
    per_seed = {job["key"]: rows_per_seed(job) for job in jobs}
    chunks, start = [], 0
    while start < len(rows):
        key = rows[start].get("key", "")
        if key not in per_seed:
            raise InputError(
                f"sweep.csv holds rows of configuration {key!r}, which this config does not "
                "produce (other settings); use another --out"
            )
        end = start
        while end < len(rows) and rows[end].get("key") == key:
            end += 1
        block = rows[start:end]
        seeds = _seeds_of(block)
        if len(block) != per_seed[key] * len(seeds):
            if end < len(rows):
                raise InputError(
                    f"sweep.csv: configuration {key} has {len(block)} rows for seeds {seeds}, "
                    f"expected {per_seed[key] * len(seeds)}, and more rows follow; use another --out"
                )
            break
        chunks.append((_chunk(key, seeds), len(block)))
        start = end
    return chunks


class SweepStore:
    """A configuration's rows as chunks of seeds in one :class:`CsvAppendStore`.

    ``get(key)`` returns the rows of every stored chunk of ``key`` once they cover the
    configuration's seeds (None before); ``put(key, rows)`` appends the rows of the seeds just
    computed as one chunk.
    """

    def __init__(self, table: CsvAppendStore, seeds: dict[str, list[int]]) -> None:
        """The sweep's table and each configuration's seeds (one unit a configuration)."""
        self.table = table
        self.seeds = seeds

    def chunks(self, key: str) -> list[tuple[list[int], list[dict[str, str]]]]:
        """The stored (seeds, rows) chunks of configuration ``key``, in file order."""
        found = []
        for name, rows in self.table.stored().items():
            head, _, seeds = name.rpartition("#")
            if head == key:
                found.append(([int(s) for s in seeds.split(",")], rows))
        return found

    def stored_seeds(self, key: str) -> set[int]:
        """The seeds of ``key`` whose rows are stored."""
        return {seed for seeds, _ in self.chunks(key) for seed in seeds}

    def get(self, key: str) -> list[dict[str, str]] | None:
        """All stored rows of ``key`` when they cover its seeds, else None."""
        if not set(self.seeds[key]) <= self.stored_seeds(key):
            return None
        return [row for _, rows in self.chunks(key) for row in rows]

    def put(self, key: str, rows: list[dict[str, str]]) -> None:
        """Append the rows of the seeds just computed for ``key`` as one chunk."""
        self.table.put(_chunk(key, _seeds_of(rows)), rows)


def sweep_study(
    config_path: str | os.PathLike[str],
    device: str = "auto",
    executor: str = "local",
    address: str | None = None,
    ray_timeout: float = DEFAULT_RAY_TIMEOUT,
) -> Study:
    """The sweep of ``config_path`` as a :class:`Study` (units: configurations).

    Returns:
        The study.

    Raises:
        InputError: a bad config or option.

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
    jobs = {job["key"]: job for job in expand_jobs(config, device_name)}
    settings = {**config.settings(), "device": device_name}
    grid = config.grid_values()
    held: dict[str, Any] = {"modes": set(), "started": time.monotonic()}

    def store(records: Path, stamp: str, study: Study, log: Callable[..., None]) -> SweepStore:
        table = CsvAppendStore(
            records,
            COLUMNS,
            stamp,
            legacy=lambda rows: legacy_chunks(list(jobs.values()), rows),
            log=log,
        )
        held["store"] = SweepStore(table, {key: job["seeds"] for key, job in jobs.items()})
        return held["store"]

    def pending() -> Iterator[list[dict[str, Any]]]:
        """The executor over every configuration not yet stored, its seeds not yet stored."""
        todo = []
        for key, job in jobs.items():
            done = held["store"].stored_seeds(key)
            seeds = [s for s in job["seeds"] if s not in done]
            if seeds:
                todo.append({**job, "seeds": seeds})
        held["pending"] = len(todo)
        return EXECUTORS[executor](todo, address, ray_timeout)

    def run_unit(key: str, context: Any) -> list[dict[str, str]]:
        if "rows" not in held:
            held["rows"] = pending()
        rows = next(held["rows"])
        if not rows or rows[0]["key"] != key:
            raise RuntimeError(f"the executor returned rows of another configuration than {key}")
        held["modes"].update(row["batching"] for row in rows)
        return [row_cells(row) for row in rows]

    def report(out: Path, rows: list[dict[str, str]]) -> str:
        record = environment_record(str(config_path), settings, grid, device_name, executor)
        record["configurations"] = {"total": len(jobs), "pending": held.get("pending", 0)}
        record["seconds_this_run"] = round(time.monotonic() - held["started"], 3)
        record["batching_this_run"] = sorted(held["modes"])
        runs.atomic_write_json(out / ENVIRONMENT_NAME, record)
        return f"sweep table: {out / TABLE_NAME}"

    return Study(
        "sweep", settings, list(jobs), run_unit, report, grid=grid, folder=TABLE_NAME, store=store
    )


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
        progress: one line on stderr per configuration.
        cpu_threads: torch intra-op threads while the sweep runs (restored after; None keeps
            torch's setting). The models are tiny: one thread is fastest on a busy machine.
        address: with ``ray``, the cluster to join (None: a private instance on 127.0.0.1).
        ray_timeout: seconds allowed to reach Ray.

    Returns:
        The path of ``sweep.csv``.

    Raises:
        InputError: a bad config or option, an unusable or busy output folder, a folder holding
            rows of other settings (or a table without its run.json), a full disk.

    """
    study = sweep_study(config_path, device, executor, address, ray_timeout)
    previous_threads = torch.get_num_threads()
    try:
        run_study(
            study,
            out_dir,
            device=device,
            threads=cpu_threads,
            config_file=config_path,
            log=_progress if progress else (lambda *parts: None),
        )
    finally:
        torch.set_num_threads(previous_threads)
    return Path(out_dir) / TABLE_NAME


def _progress(*parts: object) -> None:
    """Computed configurations only: a skipped one is not news."""
    if not str(parts[0]).endswith("skipped"):
        progress(*parts)
