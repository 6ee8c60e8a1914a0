"""The defenses study on the one study mechanism (``harness.study.run_study``).

A unit is a seed: every defense of ``experiment.run_seed``, stored as ``seeds/seed-S.json``
with the settings fingerprint. The reports (``report.write_reports``) are rebuilt from every
stored seed after each one.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sublim_theory.harness.study import Context, Study, seed_range, seed_study, split_parts
from sublim_theory.studies.defenses import experiment, report
from sublim_theory.testbeds.lm import training

__all__ = ["build", "write_rows"]


def write_rows(out: Path, rows: list[dict]) -> str:
    """Write every report from stored rows (nulls back to NaN); return the tables."""
    return report.write_reports(out, split_parts(rows, ())[0])


def _summary(seed: int, rows: list[dict]) -> str:
    diff = {r["condition"]: r["value"] for r in rows if r["metric"] == "paired_diff"}
    return "diff " + "  ".join(
        f"{name} {diff[f'student_{name}']:+.3f}"
        for name in ("plain", "top_p", "min_prob", "masked")
    )


def build(config_file: str | Path | None, first_seed: int, seeds: int) -> Study:
    """The defenses study of a config file for ``seeds`` seeds from ``first_seed``.

    Returns:
        The study.

    Raises:
        InputError: a bad config or seed range.

    """
    config, setting = experiment.load_config(config_file)
    units = seed_range(first_seed, seeds)

    def run_unit(seed: int, context: Context) -> list[dict]:
        return experiment.run_seed(config, setting, seed, context.cache, context.log)

    return seed_study(
        "defenses",
        {"numbers": config.to_dict(), "defenses": asdict(setting)},
        units,
        run_unit,
        write_rows,
        summary=_summary,
        cpu_only=True,
        cache_bytes=training.checkpoint_bytes(config),
    )
