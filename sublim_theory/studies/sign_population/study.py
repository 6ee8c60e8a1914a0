"""The sign-step population study on the one study mechanism (``harness.study.run_study``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sublim_theory.harness.study import Study, progress, run_study
from sublim_theory.studies.sign_population import experiment as population

__all__ = ["build", "run_sign_population"]


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


def run_sign_population(
    config_path: str | Path,
    out: str | Path,
    threads: int | None = None,
    log: Callable[..., None] = progress,
) -> str:
    """Run (or resume) every block not yet stored in ``out``, then write the report.

    Returns:
        The Markdown table.

    """
    return run_study(build(config_path), out, threads=threads, config_file=config_path, log=log)
