"""Run the sign-step population study into a folder, one resumable unit at a time.

    python experiments/sign_population.py --config sign_population_default \
        --out experiments/results/sign_population --threads 1

Each unit (a block of problems, :func:`sublim_theory.studies.sign_population.experiment.units`) is written
atomically to ``OUT/units/<name>.json`` with its rows and CPU seconds; a rerun skips every unit
whose JSON exists, then rebuilds ``sign_population.csv``, ``rates.csv``, ``predictors.csv``,
``logistic.csv`` and ``table.md`` from all units (:func:`sublim_theory.sign_population.report`).
``run.json`` records the settings (a rerun with other settings is refused) and
``environment.json`` the machine, packages, git revision and the total CPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness import records, runs
from sublim_theory.studies.sign_population import experiment as study

DEFAULT_CONFIG = "sign_population_default"


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``--config``, ``--out``, ``--threads``, ``--quiet``.

    Returns:
        The parsed arguments.

    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=runs.config_file,
        default=runs.config_file(DEFAULT_CONFIG),
        help="a TOML file or the name of a packaged config",
    )
    parser.add_argument("--out", required=True, help="output folder (rerun to resume)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def run(config_path: str | Path, out: str | Path, quiet: bool = False) -> str:
    """Run (or resume) every unit, then write the report.

    Returns:
        The Markdown table.

    """
    config = study.load_config(config_path)
    blocks = study.units(config)
    with runs.OutputFolder(out, "sign_population") as folder:
        folder.check_settings(config.settings(), {"units": [u["name"] for u in blocks]})
        unit_dir = folder.path / "units"
        unit_dir.mkdir(exist_ok=True)
        rows, cpu = [], 0.0
        for number, unit in enumerate(blocks, 1):
            path = unit_dir / f"{unit['name']}.json"
            if path.exists():
                record = json.loads(path.read_text())
                state = "kept"
            else:
                start = time.process_time()
                unit_rows = study.run_unit(config, unit)
                record = {
                    "unit": unit,
                    "rows": unit_rows,
                    "cpu_seconds": time.process_time() - start,
                }
                runs.atomic_write_json(path, record)
                state = "ran"
            rows.extend(record["rows"])
            cpu += record["cpu_seconds"]
            if not quiet:
                print(
                    f"[{number}/{len(blocks)}] {unit['name']} {state} "
                    f"({record['cpu_seconds']:.1f} s CPU)",
                    file=sys.stderr,
                    flush=True,
                )
        text = study.report(rows, folder.path)
        runs.atomic_write_json(
            folder.path / "environment.json",
            records.environment_record(
                "cpu",
                command=f"python experiments/sign_population.py --config "
                f"{Path(config_path).stem} --out {out} --threads {torch.get_num_threads()}",
                cpu_seconds_total=cpu,
                problems=len({(r["stratum"], r["problem"]) for r in rows}),
            ),
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Returns:
        0 on success, 2 on bad input (the message on stderr).

    """
    args = parse_arguments(argv)
    torch.set_num_threads(args.threads)
    try:
        print(run(args.config, args.out, args.quiet))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
