"""The projection study on the one study mechanism (``harness.study.run_study``).

A unit is one (seed, data set), ``units/seed-S-NAME.json`` with the settings fingerprint: per
seed the base's own numbers (the null) and one teacher data set per animal. Within one run the
units of a seed share its base, its numbers and its projected directions; a resumed unit
recomputes what it needs (the same values: every step is seeded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublim_theory.harness.runs import load_toml
from sublim_theory.harness.study import Context, Study, seed_range
from sublim_theory.studies.screen.experiment import teacher_documents
from sublim_theory.studies.screen_projection import experiment, report
from sublim_theory.testbeds.lm import training

__all__ = ["build"]


def build(config_file: str | Path | None, first_seed: int, seeds: int) -> Study:
    """The projection study of a config file (None: the built-in defaults).

    Returns:
        The study for ``run_study``.

    Raises:
        InputError: a bad config or seed range.

    """
    raw = load_toml(config_file) if config_file is not None else {}
    config = experiment.experiment_config(raw, source=str(config_file or "defaults"))
    seed_list = seed_range(first_seed, seeds)
    plan: dict[str, tuple[int, str | None]] = {}
    for seed in seed_list:
        plan[f"seed-{seed}-base"] = (seed, None)
        plan.update({f"seed-{seed}-teacher-{a}": (seed, a) for a in config.projection.teachers})
    memo: dict[tuple, Any] = {}
    # prompts sampled per data set: a quarter more than are scored, as the filter drops a few
    count = config.projection.screen_examples + config.projection.screen_examples // 4

    def shared(key: tuple, make) -> Any:
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def run_unit(name: str, context: Context) -> list[dict]:
        seed, animal = plan[name]
        log, numbers = context.log, config.numbers
        base = shared(
            ("base", seed),
            lambda: training.cached_base(
                numbers, training.BaseSpec(seed, seed, seed), context.cache, log
            )[0],
        )
        directions = shared(
            ("directions", seed), lambda: experiment.trait_directions(config, base, log)
        )
        if animal is None:
            documents = teacher_documents(numbers, seed, base, count)
            label = {"seed": seed, "dataset": "base", "teacher": "none"}
        else:
            trait = experiment.with_trait(numbers, animal)
            teacher = training.finetune_teacher(base, trait)
            documents = teacher_documents(trait, seed, teacher, count)
            label = {"seed": seed, "dataset": f"teacher-{animal}", "teacher": animal}
        return experiment.data_set_unit(config, base, documents, directions, label, log)

    animals = list(config.numbers.corpus.animals)

    def write_rows(out: Path, rows: list[dict]) -> str:
        return report.write_reports(out, rows, animals, config.to_dict()["projection"])

    return Study(
        "projection",
        config.to_dict(),
        list(plan),
        run_unit,
        write_rows,
        grid={"seeds": seed_list},
        unit_file=lambda name: f"{name}.json",
        folder="units",
        cpu_only=True,
        cache_bytes=training.checkpoint_bytes(config.numbers),
    )
