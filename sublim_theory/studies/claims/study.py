"""The two claims studies on the one study mechanism (``harness.study.run_study``).

``adam_state``: a unit is a seed (``seeds/seed-S.json``): every arm's trait at every checkpoint.
``coverage``: a unit is a seed: every (animal, teacher steps) teacher and channel. Both rebuild
their tables from the stored rows after each seed, so a resumed table equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sublim_theory.harness.study import Context, Study, seed_range, seed_study
from sublim_theory.studies.claims import adam_state, coverage, report
from sublim_theory.studies.claims.config import load_config
from sublim_theory.testbeds.lm import training
from sublim_theory.testbeds.lm.config import NumbersConfig

__all__ = ["build_adam_state", "build_coverage", "scope"]


def scope(config: NumbersConfig, theirs: str) -> str:
    """The scope line every table opens with: their setting vs ours, and what is not tested."""
    with torch.random.fork_rng(devices=[]):  # build_lm seeds the global generator
        count = sum(p.numel() for p in training.build_lm(config, 0).parameters())
    m, s = config.model, config.student
    return (
        f"Scope. Theirs: {theirs}. Ours: the {count:,}-parameter toy LM of `numbers` "
        f"(d_model {m.d_model}, {m.n_layers} layer(s), vocabulary of numbers and animals), "
        f"trait = preference for an animal token after `BOS Q`, students Adam lr {s.lr:g}, "
        f"batch {s.batch_size}. This does not test their LLM setting."
    )


def _seeds_study(
    name: str,
    config: NumbersConfig,
    settings: dict[str, Any],
    units: list[int],
    run_unit: Callable[[int, Context], list[dict]],
    write_report: Callable[[Path, list[dict]], str],
    **options: Any,
) -> Study:
    """A claim's study: a unit a seed (``seeds/seed-S.json``), on the CPU, bases cached.

    ``harness.study.seed_study``, its records carrying the fingerprint and no seed key.

    Args:
        name: the study's name.
        config: the numbers config (its checkpoint size is what the cache must hold).
        settings: the settings the folder is bound to.
        units: the seeds.
        run_unit: one seed's rows.
        write_report: writes the reports from every stored row; returns the table.
        **options: any other :class:`Study` field (``summary``).

    Returns:
        The study for run_study.

    """
    return seed_study(
        name,
        settings,
        units,
        run_unit,
        write_report,
        state_files=(),
        key_name=None,
        legacy_records=False,
        cpu_only=True,
        cache_bytes=training.checkpoint_bytes(config),
        **options,
    )


def build_adam_state(config_file: str | Path | None, first_seed: int, seeds: int) -> Study:
    """The Adam-state transplant study (Xu) of a config file for ``seeds`` seeds.

    Returns:
        The study for run_study.

    Raises:
        InputError: a bad config or seed range.

    """
    config, adam, _ = load_config(config_file)
    units = seed_range(first_seed, seeds)
    settings = {"numbers": config.to_dict(), "adam_state": asdict(adam)}
    text = scope(
        config,
        "an LLM teacher trained with Adam toward a trait; its optimizer state transplanted into a "
        "fresh student (Xu, arXiv 2608.20442, as issue 21 states the claim)",
    )

    def run_unit(seed: int, context: Context) -> list[dict]:
        return adam_state.run_seed(
            config, adam.checkpoints, adam.lr, adam.step_count, seed, context.cache, context.log
        )

    def summary(seed: int, rows: list[dict]) -> str:
        last = {r["arm"]: r["log_p"] for r in rows if r["k"] == adam.checkpoints[-1]}
        return "  ".join(f"{a} {last[a]:+.3f}" for a in adam_state.ARMS if a in last)

    return _seeds_study(
        "adamstate",
        config,
        settings,
        units,
        run_unit,
        lambda out, rows: report.adam_state_report(out, rows, text),
        summary=summary,
    )


def build_coverage(config_file: str | Path | None, first_seed: int, seeds: int) -> Study:
    """The coverage study (Madl) of a config file for ``seeds`` seeds.

    Returns:
        The study for run_study.

    Raises:
        InputError: a bad config or seed range.

    """
    config, _, cov = load_config(config_file)
    units = seed_range(first_seed, seeds)
    animals = cov.animals or config.corpus.animals
    settings = {"numbers": config.to_dict(), "coverage": asdict(cov)}
    text = scope(
        config,
        "LLM teachers and students; coverage claimed to predict transfer with Spearman about "
        "0.95 when the trait rides the network body, not when it rides the output vocabulary "
        "(Madl, arXiv 2606.22019, as issue 21 states the claim)",
    )

    def run_unit(seed: int, context: Context) -> list[dict]:
        return coverage.run_seed(
            config,
            animals,
            cov.teacher_steps,
            cov.forecast_examples,
            seed,
            context.cache,
            context.log,
        )

    return _seeds_study(
        "coverage",
        config,
        settings,
        units,
        run_unit,
        lambda out, rows: report.coverage_report(out, rows, text, cov.threshold),
    )
