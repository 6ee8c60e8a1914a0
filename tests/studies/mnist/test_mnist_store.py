"""``mnist`` under a full disk, lost metadata and absurd sizes (issue 24 items 1, 2, 5)."""

import csv
import json

import pytest

from sublim_theory.cli.main import main
from sublim_theory.harness.runs import CONFIG_DIR


@pytest.fixture(scope="module")
def digits(digit_folder):
    return digit_folder(40, 20)


def _argv(digits, out, *extra):
    argv = ["mnist", "--config", str(CONFIG_DIR / "mnist_tiny.toml"), "--mnist-dir", str(digits)]
    return argv + ["--out", str(out), "--aux-logits", "1", "2", "--models", "2", "--quiet", *extra]


def test_a_full_disk_at_a_run_record_is_one_line_and_the_rerun_completes(
    digits, tmp_path, monkeypatch, capsys, disk_full_at
):
    reference = tmp_path / "reference"
    assert main(_argv(digits, reference)) == 0
    disk_full_at("aux_logits-2.json")  # the disk is full when the record of m = 2 is written
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(_argv(digits, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "runs/aux_logits-2.json" in err and "No space" in err
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["aux_logits-1.json"]  # no temp
    assert main(_argv(digits, out)) == 0
    for name in ("table.csv", "models.csv", "table.md"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_stored_runs_without_run_json_are_refused(digits, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(digits, out, "--aux-logits", "1")) == 0
    (out / "run.json").unlink()
    capsys.readouterr()
    assert main(_argv(digits, out, "--aux-logits", "1", "--lr", "1e-3")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds stored results" in err and "but no run.json" in err and err.count("\n") == 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--noise-images", "1000000000000"),
        ("--models", "1000000000"),
        ("--student-epochs", "10000000000"),
        ("--hidden", "10000000000"),
        ("--lr", "1e308"),
    ],
)
def test_absurd_sizes_are_one_line_before_any_work(tmp_path, capsys, flag, value):
    argv = ["mnist", "--config", str(CONFIG_DIR / "mnist_tiny.toml"), flag, value]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "must be <=" in err
    assert not (tmp_path / "out").exists()


def test_models_csv_holds_each_students_last_epoch(digits, tmp_path):
    """models.csv's cosine is the per-model cosine after the LAST student epoch."""
    out = tmp_path / "out"
    assert main(_argv(digits, out, "--aux-logits", "2")) == 0
    results = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "models.csv").open()))
    last = results["student_aux"]["cosine_per_epoch"]
    assert len(last) == 2  # two student epochs, so first and last differ
    for group in ("student_aux", "cross_all"):
        epochs = results["runs"][0]["rows"][group]["cosine_per_epoch"]
        cosines = [float(r["cosine"]) for r in rows if r["row"] == group]
        assert cosines == epochs[-1]["per_model"] != epochs[0]["per_model"]
