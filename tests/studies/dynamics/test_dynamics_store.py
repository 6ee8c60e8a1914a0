"""``dynamics`` under a cut table, lost epochs, a full disk and absurd sizes (issue 24), and the
committed folder's tables rebuilt from its CSVs byte for byte."""

import shutil
from pathlib import Path

import pytest

import sublim_theory.studies.dynamics.study as study
from sublim_theory.cli.main import main
from sublim_theory.harness.runs import CONFIG_DIR

COMMITTED = Path(__file__).resolve().parents[3] / "experiments" / "results" / "dynamics"
TABLES = ("steps.csv", "accuracy.csv", "table.md")


@pytest.fixture(scope="module")
def digits(digit_folder):
    return digit_folder(300, 40)


def _argv(digits, out, *extra):
    config = str(CONFIG_DIR / "mnist_dynamics_tiny.toml")
    argv = ["dynamics", "--config", config, "--mnist-dir", str(digits), "--out", str(out)]
    return [*argv, "--quiet", "--trait-digits", "64", *extra]


@pytest.fixture(scope="module")
def whole(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamics") / "whole"
    assert main(_argv(digits, out)) == 0
    return out


def _no_training(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("trained although the epochs were stored")

    monkeypatch.setattr(study, "train_epoch", never)
    monkeypatch.setattr(study, "start_state", never)


def _same_tables(a, b):
    for name in TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_rerun_over_a_truncated_steps_csv_rebuilds_it(digits, whole, tmp_path, monkeypatch):
    """Issue 24 item 6: this was a TypeError; the tables are rebuilt from the stored epochs."""
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    text = (out / "steps.csv").read_text()
    (out / "steps.csv").write_text(text[: len(text) // 2])
    _no_training(monkeypatch)
    assert main(_argv(digits, out)) == 0
    _same_tables(out, whole)


def test_a_folder_of_tables_only_is_read_not_retrained(digits, whole, tmp_path, monkeypatch):
    """A folder written before epochs were stored: its whole epochs are read from the tables."""
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    shutil.rmtree(out / "units")
    _no_training(monkeypatch)
    assert main(_argv(digits, out)) == 0
    _same_tables(out, whole)


def test_a_cut_table_of_an_old_folder_recomputes_the_cut_epoch(digits, whole, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    shutil.rmtree(out / "units")
    lines = (out / "steps.csv").read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.split(",")[2] != "2"]  # epoch 2 cut out
    (out / "steps.csv").write_text("".join(kept))
    capsys.readouterr()
    assert main([a for a in _argv(digits, out) if a != "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1: read from" in err and "epoch 2: read from" not in err  # 2 was retrained
    _same_tables(out, whole)


def test_an_epoch_in_the_state_but_not_stored_is_stored_without_training(
    digits, whole, tmp_path, monkeypatch
):
    """Killed between writing state.pt and storing the epoch: nothing is trained twice."""
    real = study.run_study
    out = tmp_path / "out"

    def stop_after_state(study_, *args, **kwargs):
        unit = study_.run_unit

        def run_unit(epoch, context):
            rows = unit(epoch, context)
            if epoch == 2:
                raise KeyboardInterrupt  # state.pt holds epoch 2; units/ only epoch 1
            return rows

        return real(study_.__class__(**{**study_.__dict__, "run_unit": run_unit}), *args, **kwargs)

    monkeypatch.setattr(study, "run_study", stop_after_state)
    assert main(_argv(digits, out)) == 130
    assert sorted(p.name for p in (out / "units").iterdir()) == ["epoch-1.json"]
    monkeypatch.undo()
    _no_training(monkeypatch)
    assert main(_argv(digits, out)) == 0
    _same_tables(out, whole)
    assert not (out / study.STATE_NAME).exists()


def test_a_full_disk_at_an_epoch_is_one_line_and_the_rerun_completes(
    digits, whole, tmp_path, monkeypatch, capsys, disk_full_at
):
    disk_full_at("epoch-2.json")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(_argv(digits, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "epoch-2.json" in err and "No space left" in err
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "units").iterdir()) == ["epoch-1.json"]
    _no_training(monkeypatch)  # epoch 2 is in state.pt: stored from it
    assert main(_argv(digits, out)) == 0
    _same_tables(out, whole)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--noise-images", "1000000000000"), ("--models", "1000000000"), ("--trait-digits", "301")],
)
def test_absurd_sizes_are_one_line_before_any_training(
    digits, tmp_path, monkeypatch, capsys, flag, value
):
    _no_training(monkeypatch)
    assert main([*_argv(digits, tmp_path / "out"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag[2:].replace("-", "_") in err


@pytest.mark.slow
def test_the_committed_tables_rebuild_byte_for_byte(tmp_path, monkeypatch):
    """experiments/results/dynamics, written before epochs were stored: nothing is retrained
    and steps.csv, accuracy.csv, table.md and dynamics.png come back identical."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("steps.csv", "accuracy.csv", "run.json"):
        shutil.copy(COMMITTED / name, out / name)
    _no_training(monkeypatch)
    argv = ["dynamics", "--config", "mnist_dynamics", "--threads", "1", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    for name in (*TABLES, "dynamics.png"):
        assert (out / name).read_bytes() == (COMMITTED / name).read_bytes(), name
