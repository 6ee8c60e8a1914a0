"""The numbers study on the one study mechanism (``harness.study.run_study``).

A unit is a seed: every condition of ``experiment.run_seed``, stored as ``seeds/seed-S.json``
(its tidy rows, entanglement rows and per-step cosines, with the settings fingerprint). The
reports (``report.write_reports``) are rebuilt from every stored seed after each one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import load_toml
from sublim_theory.harness.study import PART, Context, Study, seed_range, seed_study, split_parts
from sublim_theory.studies.numbers import experiment, report
from sublim_theory.testbeds.lm import training
from sublim_theory.testbeds.lm.config import NumbersConfig, from_dict

__all__ = ["PARTS", "build", "variant_study", "write_rows"]

PARTS = ("entanglement", "steps")  # the record's tables beside its tidy rows


def write_rows(out: Path, rows: list[dict]) -> str:
    """Write every report from stored (tagged) rows; return the table."""
    main, entangled, steps = split_parts(rows, PARTS)
    return report.write_reports(out, main, entangled, steps)


def _summary(seed: int, rows: list[dict]) -> str:
    p = {r["condition"]: r["value"] for r in rows if r.get("metric") == "p_trait"}
    return (
        f"base {p['base']:.3f}  teacher {p['teacher']:.3f}  student {p['student']:.3f}  "
        f"control {p['control']:.3f}  soft {p['soft']:.3f}  "
        f"cross {p['cross_student']:.3f} vs {p['cross_control']:.3f}"
    )


def _no_orphans(context: Context, stored: Mapping[str, list[dict] | None]) -> None:
    """Refuse a folder whose table holds seeds with no stored record (a merge, an old version)."""
    have = {int(seed) for seed, rows in stored.items() if rows is not None}
    lost = report.table_seeds(context.out / "results.csv") - have
    if lost:
        raise InputError(
            f"'{context.out / 'results.csv'}' holds seed(s) {sorted(lost)} with no stored seed "
            f"file in {context.out / 'seeds'}; rewriting it would drop them: use a new --out"
        )


def build(config_file: str | Path | None, first_seed: int, seeds: int) -> Study:
    """The numbers study of a config file (None: the defaults) for ``seeds`` seeds from ``first_seed``.

    Returns:
        The study.

    Raises:
        InputError: a bad config or seed range.

    """
    raw = load_toml(config_file) if config_file is not None else {}
    config = from_dict(raw, source=str(config_file or "defaults"))
    units = seed_range(first_seed, seeds)

    def run_unit(seed: int, context: Context) -> list[dict]:
        rows, entangled, steps = experiment.run_seed(config, seed, context.cache, context.log)
        return (
            rows
            + [{**r, PART: "entanglement"} for r in entangled]
            + [{**r, PART: "steps"} for r in steps]
        )

    return seed_study(
        "numbers",
        config.to_dict(),
        units,
        run_unit,
        write_rows,
        parts=PARTS,
        summary=_summary,
        cpu_only=True,
        prepare=_no_orphans,
        cache_bytes=training.checkpoint_bytes(config),
    )


def variant_study(
    name: str,
    config: NumbersConfig,
    setting: Any,
    first_seed: int,
    seeds: int,
    run_seed: Callable[..., list[dict]],
    report: Callable[[Path, list[dict]], str],
    summary: Callable[[int, list[dict]], str],
) -> Study:
    """A study of a variant of the numbers experiment (defenses, divergence): a unit a seed.

    Its settings are ``{"numbers": config, name: setting}``; a unit runs
    ``run_seed(config, setting, seed, cache, log)`` on the CPU, its base checkpoints cached.

    Args:
        name: the study's name, and the key of the variant's settings.
        config: the numbers experiment's config.
        setting: the variant's own settings (a dataclass).
        first_seed: the first seed.
        seeds: how many seeds.
        run_seed: one seed's tidy rows.
        report: writes the reports from every stored row; returns the table.
        summary: a seed's line on stderr.

    Returns:
        The study.

    Raises:
        InputError: a bad seed range.

    """
    units = seed_range(first_seed, seeds)

    def run_unit(seed: int, context: Context) -> list[dict]:
        return run_seed(config, setting, seed, context.cache, context.log)

    return seed_study(
        name,
        {"numbers": config.to_dict(), name: asdict(setting)},
        units,
        run_unit,
        report,
        summary=summary,
        cpu_only=True,
        cache_bytes=training.checkpoint_bytes(config),
    )
