"""The defenses study on the one study mechanism (``harness.study.run_study``).

A unit is a seed: every defense of ``experiment.run_seed``, stored as ``seeds/seed-S.json``
with the settings fingerprint. The reports (``report.write_reports``) are rebuilt from every
stored seed after each one.
"""

from __future__ import annotations

from pathlib import Path

from sublim_theory.harness.study import Study, split_parts
from sublim_theory.studies.defenses import experiment, report
from sublim_theory.studies.numbers.study import variant_study

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
    return variant_study(
        "defenses", config, setting, first_seed, seeds, experiment.run_seed, write_rows, _summary
    )
