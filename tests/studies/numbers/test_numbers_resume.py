"""``numbers`` resumes per seed and never shrinks its table (issue 11, case 4).

A run killed after seed 0 keeps seed 0; the rerun computes only the missing seeds and its table
equals an uninterrupted run's. A rerun killed before it finishes a new seed leaves the table
it found. Different settings in the same folder are refused before any training.
"""

import shutil

import pytest

from sublim_theory.cli.main import main
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.numbers import experiment
from sublim_theory.studies.numbers.report import read_csv

TINY = CONFIG_DIR / "numbers_tiny.toml"


pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(out, cache, seeds=2, config=TINY):
    return ["numbers", "--config", str(config), "--seeds", str(seeds), "--out", str(out)] + [
        "--cache",
        str(cache),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of seeds 0-1 (its base cache is shared by the other runs)."""
    root = tmp_path_factory.mktemp("numbers_resume")
    assert main(_argv(root / "reference", root / "cache")) == 0
    return root / "reference", root / "cache"


def _without_timings(path):
    # wall-clock metrics differ between any two runs; every other value is deterministic
    return [r for r in read_csv(path) if "seconds" not in r["metric"]]


def _interrupt_at(monkeypatch, seed_to_stop, calls):
    real = experiment.run_seed

    def run_seed(config, seed, *args, **kwargs):
        calls.append(seed)
        if seed == seed_to_stop:
            raise KeyboardInterrupt  # what Ctrl-C or a kill between seeds looks like
        return real(config, seed, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_seed", run_seed)


def test_killed_run_resumes_to_the_uninterrupted_table(reference, tmp_path, monkeypatch, capsys):
    ref, cache = reference
    out = tmp_path / "out"
    calls = []
    _interrupt_at(monkeypatch, 1, calls)
    assert main(_argv(out, cache)) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("interrupted")
    assert {r["seed"] for r in read_csv(out / "results.csv")} == {0}  # seed 0 was kept
    monkeypatch.undo()
    calls = []
    _interrupt_at(monkeypatch, None, calls)
    assert main(_argv(out, cache)) == 0
    assert calls == [1]  # seed 0 was not recomputed
    assert _without_timings(out / "results.csv") == _without_timings(ref / "results.csv")
    for name in ("steps.csv", "entanglement.csv"):
        assert (out / name).read_text() == (ref / name).read_text(), name


def test_rerun_killed_after_seed_0_keeps_every_seed(reference, tmp_path, monkeypatch):
    ref, cache = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = (out / "results.csv").read_bytes()
    calls = []
    _interrupt_at(monkeypatch, 1, calls)
    assert main(_argv(out, cache)) == 0  # both seeds are stored: nothing to compute
    assert calls == []
    assert (out / "results.csv").read_bytes() == before


def test_more_seeds_extend_and_different_settings_are_refused(
    reference, tmp_path, monkeypatch, capsys
):
    ref, cache = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    calls = []
    _interrupt_at(monkeypatch, None, calls)
    assert main(_argv(out, cache, seeds=3)) == 0
    assert calls == [2]
    assert {r["seed"] for r in read_csv(out / "results.csv")} == {0, 1, 2}
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.read_text().replace("[teacher]\nsteps = 5", "[teacher]\nsteps = 6"))
    assert changed.read_text() != TINY.read_text()
    calls.clear()
    capsys.readouterr()
    assert main(_argv(out, cache, seeds=3, config=changed)) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "steps" in error and "--out" in error
    assert calls == []  # refused before any training
    assert {r["seed"] for r in read_csv(out / "results.csv")} == {0, 1, 2}


def test_table_without_stored_seeds_is_not_overwritten(reference, tmp_path, monkeypatch, capsys):
    """A folder whose table holds seeds this run cannot rebuild (a merge, an older version)."""
    ref, cache = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    shutil.rmtree(out / "seeds")
    calls = []
    _interrupt_at(monkeypatch, None, calls)
    capsys.readouterr()
    assert main(_argv(out, cache)) == 2
    assert "would drop them" in capsys.readouterr().err
    assert calls == [] and (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
