"""``sublim-theory screen``: forecast, before training, which trait a data set pushes a model toward.

On the tiny LM of ``numbers`` (``sublim_theory.engine.screen``): per seed a base, one teacher per animal
in ``[screen] teachers``, each teacher's filtered numbers screened against the base (every
variant, bootstrap intervals, per-document attributions), a student trained on them (the
measured change), the same data with the top q of documents by attribution dropped (and a random
q), and the null: the base's own numbers. Each finished (seed, data set) is stored at once,
atomically, as ``units/seed-S-NAME.json``; a rerun into the same folder skips stored units and
refuses other settings. Reports, rebuilt from every stored unit after each one: ``rows.csv``
(tidy), ``ranking.csv`` (per data set and trait), ``table.md`` (detection, null, one-step
slopes, correlation, filtering, cost) and ``screen.png``. Progress goes to stderr, the tables
to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sublim_theory.cli.main import (
    add_config_argument,
    add_device_argument,
    nonnegative_int,
    positive_int,
    thread_count,
)
from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record, restore_nan
from sublim_theory.harness.runs import (
    OutputFolder,
    atomic_write_json,
    load_toml,
    resolve_device,
)
from sublim_theory.studies.screen.report import write_reports

__all__ = [
    "HELP",
    "UNITS_FOLDER",
    "register",
    "run",
    "stored_units",
]

HELP = "screen a data set for a hidden trait before training (first-order trait forecast)"
UNITS_FOLDER = "units"  # one JSON file per finished (seed, data set): the unit a rerun resumes


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``screen`` flags to ``parser``."""
    add_config_argument(parser)  # the numbers tables plus [screen]; default = screen_default
    parser.add_argument("--seeds", type=positive_int, default=1, help="number of seeds")
    parser.add_argument(
        "--seed", "--first-seed", dest="seed", type=nonnegative_int, default=0, help="first seed"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--cache", type=Path, default=None, help="base-model cache directory (default: OUT/cache)"
    )
    parser.add_argument(
        "--null-draws",
        type=nonnegative_int,
        default=0,
        help="extra null data sets per seed: the base's own numbers on fresh prompts "
        "(screened with every variant, after the other units)",
    )
    parser.add_argument(
        "--runner-up-drops",
        action="store_true",
        help="the filter's specificity control: also drop the top q toward the forecast's "
        "second trait and train on the rest (after the other units)",
    )
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    add_device_argument(parser)


def _progress(*parts: object, file=None) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# the run: units stored one by one, resumable
# --------------------------------------------------------------------------------------------
def stored_units(out: Path) -> dict[str, list[dict]]:
    """Every unit stored in ``out/units``: ``{name: rows}``.

    Raises:
        InputError: if a stored unit file is not one this command wrote.

    """
    stored = {}
    for path in sorted((out / UNITS_FOLDER).glob("seed-*.json")):
        try:
            record = json.loads(path.read_text())
            stored[record["name"]] = [restore_nan(dict(row)) for row in record["rows"]]
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"stored unit file '{path}' is unreadable ({type(error).__name__}: {error}); "
                "delete it to recompute that unit"
            ) from error
    return stored


def run(args: argparse.Namespace) -> int:
    """Validate every argument, then compute the units not yet stored in ``--out``.

    Returns:
        0 on success.

    Raises:
        InputError: for a bad config, device, cache or output folder, before any training.

    """
    from sublim_theory.studies.numbers.experiment import CROSS_OFFSET
    from sublim_theory.studies.screen import experiment as screen_study
    from sublim_theory.testbeds.lm import training

    raw = load_toml(args.config) if args.config is not None else {}
    config = screen_study.experiment_config(raw, source=str(args.config or "defaults"))
    device = resolve_device(args.device)
    if device.type != "cpu":
        raise InputError(
            f"screen trains its tiny LM on the CPU only (--device {args.device} resolved to "
            f"{device}); use --device cpu"
        )
    if args.cache is not None and args.cache.exists() and not args.cache.is_dir():
        raise InputError(f"--cache '{args.cache}' is a file; it must be a folder")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = config.to_dict()["screen"]
    animals = list(config.numbers.corpus.animals)

    with OutputFolder(args.out, "screen") as folder:
        out = folder.path
        cache = args.cache if args.cache is not None else out / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        seeds = list(range(args.seed, args.seed + args.seeds))
        draws = list(range(args.null_draws))
        controls = ["runner_up"] if args.runner_up_drops else []
        folder.check_settings(
            config.to_dict(), {"seeds": seeds, "null_draws": draws, "controls": controls}
        )
        atomic_write_json(
            out / "environment.json",
            environment_record(
                "cpu",
                config=config.to_dict(),
                config_file=None if args.config is None else str(args.config),
                seeds=seeds,
            ),
        )
        (out / UNITS_FOLDER).mkdir(exist_ok=True)
        stored = stored_units(out)

        def store(name: str, rows: list[dict]) -> None:
            atomic_write_json(out / UNITS_FOLDER / f"{name}.json", {"name": name, "rows": rows})
            stored[name] = rows
            write_reports(out, [r for k in sorted(stored) for r in stored[k]], animals, settings)

        # detection first (every seed), then the filter experiment: a run cut short still
        # has the detection table complete for the seeds it reached
        documents_of: dict[tuple[int, str], torch.Tensor] = {}
        bases: dict[int, torch.nn.Module] = {}

        def base_of(seed: int) -> torch.nn.Module:
            if seed not in bases:
                spec = training.BaseSpec(seed, seed, seed)
                bases[seed] = training.cached_base(config.numbers, spec, cache, _progress)[0]
            return bases[seed]

        for seed in seeds:
            names = [f"seed-{seed}-base"] + [
                f"seed-{seed}-teacher-{a}" for a in config.screen.teachers
            ]
            if all(n in stored for n in names):
                _progress(f"seed {seed}: detection units stored in {out / UNITS_FOLDER}, skipped")
                continue
            base = base_of(seed)
            cross = None
            if config.screen.cross_init:
                cross, _ = training.cached_base(
                    config.numbers,
                    training.BaseSpec(seed + CROSS_OFFSET, seed, seed),
                    cache,
                    _progress,
                )
            t0 = time.perf_counter()
            documents = screen_study.teacher_documents(config.numbers, seed, base)
            _progress(f"seed {seed}: base numbers sampled ({documents.shape[0]} kept)")
            if names[0] not in stored:
                store(names[0], screen_study.base_unit(config, seed, base, documents, _progress))
                _progress(f"seed {seed}: base (null) done, {time.perf_counter() - t0:.0f}s")
            for animal, name in zip(config.screen.teachers, names[1:]):
                if name in stored:
                    continue
                t0 = time.perf_counter()
                rows, teacher_docs = screen_study.teacher_unit(
                    config, seed, animal, base, documents, cross, _progress
                )
                if seed in config.screen.filter_seeds:
                    documents_of[(seed, animal)] = teacher_docs
                store(name, rows)
                _progress(f"seed {seed}: teacher {animal} done, {time.perf_counter() - t0:.0f}s")
        for seed in seeds:
            if seed not in config.screen.filter_seeds:
                continue
            for animal in config.screen.teachers:
                name = f"seed-{seed}-filter-{animal}"
                if name in stored:
                    continue
                t0 = time.perf_counter()
                rows = screen_study.filter_unit(
                    config,
                    seed,
                    animal,
                    base_of(seed),
                    documents_of.pop((seed, animal), None),
                    _progress,
                )
                store(name, rows)
                _progress(f"seed {seed}: filter {animal} done, {time.perf_counter() - t0:.0f}s")
        for seed in seeds:
            for draw in draws:
                name = f"seed-{seed}-null-{draw}"
                if name not in stored:
                    store(
                        name, screen_study.null_unit(config, seed, draw, base_of(seed), _progress)
                    )
        for seed in seeds if controls else []:
            if seed not in config.screen.filter_seeds:
                continue
            for animal in config.screen.teachers:
                name = f"seed-{seed}-control-{animal}"
                if name not in stored:
                    rows = screen_study.filter_unit(
                        config, seed, animal, base_of(seed), None, _progress, runner_up=True
                    )
                    store(name, rows)
        report = write_reports(
            out, [r for k in sorted(stored) for r in stored[k]], animals, settings
        )
    print(report, flush=True)
    _progress(f"wrote {out}/rows.csv, ranking.csv, table.md, screen.png ({len(stored)} units)")
    return 0
