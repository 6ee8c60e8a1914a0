"""The screen study on the one study mechanism (``harness.study.run_study``).

A unit is one (seed, data set), stored as ``units/seed-S-NAME.json`` with the settings
fingerprint. The units run in this order, so a run cut short still has the detection table
complete for the seeds it reached: per seed the base (null), one teacher per animal (and per
hidden animal on the ``hidden_seeds``) and the format control; then the extra null draws (the
calibration's null); then the filter experiment of every teacher of the ``filter_seeds``; then
the runner-up controls. Within one run the units of a seed share its base, cross base and the base's
numbers (and a filter unit its teacher's numbers); a resumed unit recomputes what it needs, the
same values. The reports read the units' rows in the order of their names, as before the port.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import load_toml
from sublim_theory.harness.study import Context, Study, seed_range, split_parts
from sublim_theory.studies.numbers.experiment import CROSS_OFFSET
from sublim_theory.studies.screen import experiment, report
from sublim_theory.testbeds.lm import training

__all__ = ["MAX_NULL_DRAWS", "build"]

MAX_NULL_DRAWS = 1000


def _plan(config: Any, seeds: list[int], draws: int, runner_up: bool) -> dict[str, tuple]:
    """Unit name -> (kind, seed, animal or draw), in the order the units run."""
    screen = config.screen
    filtered = [s for s in seeds if s in screen.filter_seeds]
    plan: dict[str, tuple] = {}
    for seed in seeds:
        plan[f"seed-{seed}-base"] = ("base", seed, None)
        plan.update({f"seed-{seed}-teacher-{a}": ("teacher", seed, a) for a in screen.teachers})
        if seed in screen.hidden_seeds:
            hidden = screen.hidden_teachers
            plan.update({f"seed-{seed}-teacher-{a}": ("teacher", seed, a) for a in hidden})
        if screen.format_control:
            plan[f"seed-{seed}-format"] = ("format", seed, None)
    for seed in seeds:
        plan.update({f"seed-{seed}-null-{d}": ("null", seed, d) for d in range(draws)})
    for seed in filtered:
        plan.update({f"seed-{seed}-filter-{a}": ("filter", seed, a) for a in screen.teachers})
    for seed in filtered if runner_up else []:
        plan.update({f"seed-{seed}-control-{a}": ("control", seed, a) for a in screen.teachers})
    return plan


def _base(numbers: Any, spec: Any, cache: Any, log: Any) -> Any:
    """The cached base of ``spec``, with a progress line before and after (pretraining is slow)."""
    steps = numbers.pretrain.steps
    log(f"base init {spec.init_seed}: from the cache, or pretraining {steps} steps ...")
    model, info = training.cached_base(numbers, spec, cache, log)
    if info["cached"]:
        log(f"base init {spec.init_seed}: loaded from the cache")
    else:
        log(
            f"base init {spec.init_seed}: pretrained {steps} steps in {info['seconds']:.0f}s, "
            f"final loss {info['final_loss']:.3f}"
        )
    return model


def build(
    config_file: str | Path | None, first_seed: int, seeds: int, null_draws: int, runner_up: bool
) -> Study:
    """The screen study of a config file (None: the defaults).

    Raises:
        InputError: a bad config, seed range or number of null draws.

    """
    raw = load_toml(config_file) if config_file is not None else {}
    config = experiment.experiment_config(raw, source=str(config_file or "defaults"))
    if not 0 <= null_draws <= MAX_NULL_DRAWS:
        raise InputError(f"--null-draws must be between 0 and {MAX_NULL_DRAWS}, got {null_draws}")
    seed_list = seed_range(first_seed, seeds)
    plan = _plan(config, seed_list, null_draws, runner_up)
    if not any(s in config.screen.filter_seeds for s in seed_list):
        from sublim_theory.harness.study import progress

        progress(
            f"screen: no filter experiment: [screen] filter_seeds "
            f"{list(config.screen.filter_seeds)} holds none of the seeds run {seed_list}"
        )
    memo: dict[tuple, Any] = {}

    def shared(key: tuple, make) -> Any:
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def base_documents(seed: int, base: Any, log: Any) -> Any:
        started = time.perf_counter()
        documents = experiment.teacher_documents(config.numbers, seed, base)
        seconds = time.perf_counter() - started
        log(f"seed {seed}: base numbers sampled ({documents.shape[0]} kept), {seconds:.0f}s")
        return documents

    def run_unit(name: str, context: Context) -> list[dict]:
        kind, seed, arg = plan[name]
        log, numbers = context.log, config.numbers
        base = shared(
            ("base", seed),
            lambda: _base(numbers, training.BaseSpec(seed, seed, seed), context.cache, log),
        )
        if kind == "null":
            return experiment.null_unit(config, seed, arg, base, log)
        if kind == "control":
            return experiment.filter_unit(config, seed, arg, base, None, log, runner_up=True)
        if kind == "filter":
            teacher_documents = memo.pop(("documents", seed, arg), None)
            return experiment.filter_unit(config, seed, arg, base, teacher_documents, log)
        documents = shared(("base documents", seed), lambda: base_documents(seed, base, log))
        if kind == "base":
            return experiment.base_unit(config, seed, base, documents, log)
        if kind == "format":
            return experiment.format_unit(config, seed, base, documents, log)
        cross = None
        if config.screen.cross_init:
            spec = training.BaseSpec(seed + CROSS_OFFSET, seed, seed)
            cross = shared(("cross", seed), lambda: _base(numbers, spec, context.cache, log))
        rows, teacher_documents = experiment.teacher_unit(
            config, seed, arg, base, documents, cross, log
        )
        if seed in config.screen.filter_seeds and arg in config.screen.teachers:
            memo[("documents", seed, arg)] = teacher_documents
        return rows

    animals = list(config.numbers.corpus.animals)
    settings = config.to_dict()["screen"]

    def write_rows(out: Path, rows: list[dict]) -> str:
        return report.write_reports(out, split_parts(rows, ())[0], animals, settings)

    return Study(
        "screen",
        config.to_dict(),
        list(plan),
        run_unit,
        write_rows,
        grid={
            "seeds": seed_list,
            "null_draws": list(range(null_draws)),
            "controls": ["runner_up"] if runner_up else [],
        },
        unit_file=lambda name: f"{name}.json",
        folder="units",
        cpu_only=True,
        legacy_records=True,
        state_files=("rows.csv",),
        report_key=str,
        cache_bytes=training.checkpoint_bytes(config.numbers),
    )
