"""The real-model optimizer x method grid on the one study mechanism (``harness.study.run_study``).

A unit is one student, ``units/KEY.json`` with the settings fingerprint (KEY as
``experiment.Unit.key``). The settings are the ``[real_grid]`` config; the data are the stored
completions of ``--numbers``: each unit stores the digest of its seed's data, and a rerun whose
data differ from a stored unit's is refused before any compute (``prepare``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sublim_theory.errors import InputError
from sublim_theory.harness.study import Context, Study, seed_range
from sublim_theory.studies.real_grid import experiment, report

__all__ = ["build"]


def build(
    config_file: str | Path | None, numbers: str | Path, first_seed: int, seeds: int
) -> Study:
    """The grid study of a config file (None: the built-in defaults) on a numbers folder.

    Returns:
        The Study.

    Raises:
        InputError: a bad config, seed range or numbers folder.

    """
    config = experiment.load_config(config_file)
    seed_list = seed_range(first_seed, seeds)
    data = experiment.read_numbers(numbers, config, seed_list)
    units = experiment.plan_units(config, seed_list)
    by_key = {u.key: u for u in units}

    def run_unit(key: str, context: Context) -> list[dict]:
        return experiment.run_unit(config, data, by_key[key], context)

    def check_data(context: Context, stored: Mapping[str, list[dict] | None]) -> None:
        for key, rows in stored.items():
            if rows is None:
                continue
            digests = [r["animal"] for r in rows if r["metric"] == "data_digest"]
            if digests != [data[by_key[key].seed].digest]:
                raise InputError(
                    f"stored unit {key} was trained on other completions than --numbers "
                    f"'{numbers}' holds now; use a new --out or the same --numbers folder"
                )

    def summary(key: str, rows: list[dict]) -> str:
        values = {r["metric"]: r["value"] for r in rows if not r["animal"]}
        return (
            f"loss {values['loss_first']:.3f} -> {values['loss_last']:.3f}, "
            f"held-out {values['heldout_loss']:.3f}, train {values['train_seconds']:.0f}s"
        )

    return Study(
        name="real-grid",
        settings={"real_grid": config.to_dict()},
        units=[u.key for u in units],
        run_unit=run_unit,
        report=report.make_report(config, units, len(seed_list)),
        grid={"seeds": seed_list},
        unit_file=lambda key: f"{key}.json",
        summary=summary,
        prepare=check_data,
    )
