"""The sign-step population study on the one study mechanism (``harness.study.run_study``)."""

from __future__ import annotations

from pathlib import Path

from sublim_theory.harness.study import Study
from sublim_theory.studies.sign_population import experiment as population

__all__ = ["build"]


def build(config_path: str | Path) -> Study:
    """The study: one unit per block of problems (``experiment.units``), records ``units/NAME.json``.

    Returns:
        The Study.

    """
    config = population.load_config(config_path)
    blocks = {block["name"]: block for block in population.units(config)}
    return Study(
        "sign_population",
        config.settings(),
        list(blocks),
        # looked up at call time, so a test can replace ``experiment.run_unit``
        lambda name, context: population.run_unit(config, blocks[name]),
        lambda out, rows: population.report(rows, out),
        unit_file=lambda name: f"{name}.json",
    )
