"""The cross-family control on the one study mechanism (``harness.study.run_study``).

A unit is one teacher arm's numbers or one student (``units/unit-KEY.json``, with the settings
fingerprint). The settings are the ``[real_cross]`` config plus the numbers folder's fingerprint
and student settings, so a rerun on another numbers folder is refused before any compute.
"""

from __future__ import annotations

from pathlib import Path

from sublim_theory.harness.study import Context, Study, seed_range
from sublim_theory.studies.real_cross import experiment, report

__all__ = ["build"]


def build(
    config_file: str | Path | None, numbers: str | Path, first_seed: int, seeds: int
) -> Study:
    """The cross-family study of a config file (None: the built-in defaults) on a numbers folder.

    Returns:
        The Study.

    Raises:
        InputError: a bad config, seed range or numbers folder.

    """
    config = experiment.load_config(config_file)
    seed_list = seed_range(first_seed, seeds)
    source = experiment.read_numbers(numbers, seed_list)

    def run_unit(key: str, context: Context) -> list[dict]:
        return experiment.run_unit(config, source, key, context)

    def summary(key: str, rows: list[dict]) -> str:
        values = {r["metric"]: r["value"] for r in rows}
        if key.startswith("numbers-"):
            return (
                f"kept {values['keep_constrained']:.3f} constrained, {values['keep_free']:.3f} free"
            )
        return f"log P({source.student['animal']}) {values['logp']:.3f}"

    return Study(
        name="real-cross",
        settings={"real_cross": config.to_dict(), "numbers": source.settings()},
        units=experiment.plan_units(seed_list),
        run_unit=run_unit,
        report=report.make_report(source, seed_list),
        grid={"seeds": seed_list},
        summary=summary,
    )
