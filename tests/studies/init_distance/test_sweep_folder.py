"""A sweep's output folder: one run at a time, and rows that never mix two settings."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import LOCK_NAME
from sublim_theory.studies.init_distance import TABLE_NAME, read_table, run_sweep

REPO = Path(__file__).resolve().parents[3]

CONFIG = """
[grid]
architectures = {architectures}
eps = [1e-3]
seeds = {seeds}
[grid.placements]
shared = [0.0]
scaled_noise = {scales}
[model]
width = {width}
depth = 1
[measure]
n_inputs = 8
n_teacher_inputs = 8
[trajectory]
steps = 1
optimizers = ["sgd"]
"""


def _config(
    tmp_path, name="config.toml", architectures='["mlp"]', seeds="2", width=6, scales="[0.01]"
):
    path = tmp_path / name
    path.write_text(
        CONFIG.format(architectures=architectures, seeds=seeds, width=width, scales=scales)
    )
    return path


def _lines(table):
    """The table's data lines (each row's exact text, NaN cells included), markers left out:
    they name the seeds computed together, which differ between an extended and a fresh run."""
    read_table(table)  # and it is a valid table: no duplicate, no damaged line
    return [line for line in table.read_text().splitlines() if not line.startswith("#unit,")]


def test_a_second_run_on_the_same_folder_is_refused_at_once(tmp_path, capsys):
    """Two sweeps into one --out: the second stops in one line while the first still runs."""
    scales = "[0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]"
    config = _config(tmp_path, architectures='["mlp", "resmlp", "cnn"]', scales=scales)
    out = tmp_path / "out"
    arguments = ["sweep", "--config", str(config), "--out", str(out), "--device", "cpu", "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sublim_theory.cli.main", *arguments]
    first = subprocess.Popen(command, env=environment, cwd=REPO)
    try:
        # Wait until the first sweep holds the folder (its pid in the lock file), however slow
        # the machine, then try the second run in this process at once: a second process's
        # start-up raced the first sweep's end and made this test flaky.
        lock, deadline = out / LOCK_NAME, time.monotonic() + 300
        while time.monotonic() < deadline and not (
            lock.exists() and lock.read_text().strip() == str(first.pid)
        ):
            time.sleep(0.01)
        status = main(arguments)
        assert first.poll() is None, "the first sweep finished before the second was refused"
    finally:
        first.kill()
        first.wait()
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert f"is in use by another sublim-theory run (pid {first.pid})" in err
    assert err.count("\n") == 0
    table = out / TABLE_NAME
    complete_lines = table.read_text().split("\n")[:-1] if table.exists() else []
    assert len(set(complete_lines)) == len(complete_lines)  # no row written twice


def test_more_seeds_are_computed_and_appended(tmp_path):
    """seeds = 2 -> [0, 1, 2]: seed 2 is computed and appended; the rows equal a fresh run's."""
    out = tmp_path / "out"
    run_sweep(_config(tmp_path, "two.toml", seeds="2"), out, device="cpu", progress=False)
    before = _lines(out / TABLE_NAME)
    three = _config(tmp_path, "three.toml", seeds="[0, 1, 2]")
    run_sweep(three, out, device="cpu", progress=False)
    after = _lines(out / TABLE_NAME)
    assert after[: len(before)] == before
    assert {r["seed"] for r in read_table(out / TABLE_NAME)[len(before) - 1 :]} == {2}
    fresh = run_sweep(three, tmp_path / "fresh", device="cpu", progress=False)
    assert sorted(after) == sorted(_lines(fresh))


def test_an_added_architecture_is_computed(tmp_path):
    out = tmp_path / "out"
    run_sweep(_config(tmp_path, "one.toml"), out, device="cpu", progress=False)
    both = _config(tmp_path, "both.toml", architectures='["mlp", "resmlp"]')
    run_sweep(both, out, device="cpu", progress=False)
    fresh = run_sweep(both, tmp_path / "fresh", device="cpu", progress=False)
    assert sorted(_lines(out / TABLE_NAME)) == sorted(_lines(fresh))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 7}, r"other settings \(model.width: 6 -> 7\)"),
        ({"architectures": '["resmlp"]'}, r"architectures = \['mlp'\] that this run leaves out"),
        ({"seeds": "[0]"}, r"seeds = \[1\] that this run leaves out"),
    ],
)
def test_other_settings_or_a_smaller_grid_are_refused(tmp_path, change, message):
    out = tmp_path / "out"
    run_sweep(_config(tmp_path, "first.toml"), out, device="cpu", progress=False)
    (out / "environment.json").unlink()  # the record of settings is run.json, not this file
    before = (out / TABLE_NAME).read_bytes()
    with pytest.raises(InputError, match=message) as error:
        run_sweep(_config(tmp_path, "second.toml", **change), out, device="cpu", progress=False)
    assert "\n" not in str(error.value)
    assert (out / TABLE_NAME).read_bytes() == before


def test_a_table_without_its_run_record_is_refused(tmp_path):
    out = tmp_path / "out"
    config = _config(tmp_path)
    run_sweep(config, out, device="cpu", progress=False)
    (out / "run.json").unlink()
    with pytest.raises(InputError, match="holds stored results .* but no run.json"):
        run_sweep(config, out, device="cpu", progress=False)
