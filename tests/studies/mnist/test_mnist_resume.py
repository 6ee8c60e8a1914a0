"""``mnist`` resumes per m: a killed sweep keeps its finished m and the rerun completes it.

The rerun's table equals an uninterrupted run's; different settings in the same folder are
refused before any training (issue 11, case 4).
"""

import json

import pytest

import sublim_theory.studies.mnist.study as mnist_command
from sublim_theory.cli.main import main
from sublim_theory.harness.runs import CONFIG_DIR

CONFIGS = CONFIG_DIR


@pytest.fixture(scope="module")
def digits(digit_folder):
    return digit_folder(40, 20)


def _argv(digits, out, *extra):
    argv = ["mnist", "--config", str(CONFIGS / "mnist_tiny.toml"), "--mnist-dir", str(digits)]
    return argv + ["--out", str(out), "--aux-logits", "1", "2", "--models", "2", "--quiet", *extra]


def _watch(monkeypatch, stop_at=None):
    """Record each m trained; raise KeyboardInterrupt (Ctrl-C) when m == ``stop_at``."""
    calls = []
    real = mnist_command.run_experiment

    def run_experiment(config, *args, **kwargs):
        calls.append(config.aux_logits)
        if config.aux_logits == stop_at:
            raise KeyboardInterrupt
        return real(config, *args, **kwargs)

    monkeypatch.setattr(mnist_command, "run_experiment", run_experiment)
    return calls


def _rows(out):
    runs = json.loads((out / "results.json").read_text())["runs"]
    return [(run["aux_logits"], run["rows"]) for run in runs]


def test_killed_sweep_resumes_to_the_uninterrupted_table(digits, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert main(_argv(digits, reference)) == 0
    out = tmp_path / "out"
    _watch(monkeypatch, stop_at=2)
    assert main(_argv(digits, out)) == 130
    assert capsys.readouterr().err.strip() == "sublim-theory mnist: interrupted"
    assert (out / "runs" / "aux_logits-1.json").is_file()
    monkeypatch.undo()
    calls = _watch(monkeypatch)
    assert main(_argv(digits, out)) == 0
    assert calls == [2]  # m = 1 was not retrained
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()
    assert _rows(out) == _rows(reference)


def test_rerun_adds_m_and_refuses_other_settings(digits, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(_argv(digits, out)) == 0
    table = (out / "table.csv").read_text()
    calls = _watch(monkeypatch)
    assert main(_argv(digits, out, "--aux-logits", "1", "2", "3")) == 0
    assert calls == [3]
    assert (out / "table.csv").read_text().startswith(table)  # m = 1, 2 rows kept, m = 3 added
    capsys.readouterr()
    assert main(_argv(digits, out, "--lr", "1e-3")) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "lr" in error and "--out" in error
    assert calls == [3]  # refused before any training
