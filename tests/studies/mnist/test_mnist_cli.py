import json
import runpy
from pathlib import Path

import pytest

from sublim_theory.cli.main import main
from sublim_theory.harness.records import mean_interval
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.testbeds.mnist.data import IDX_FILES

CONFIGS = CONFIG_DIR
ROWS = ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")


def test_tiny_pipeline_on_embedded_digits(tmp_path, capsys):
    """The whole experiment (embedded real digits, all six rows, plot) at tiny size."""
    out = tmp_path / "out"
    assert (
        main(["mnist", "--config", str(CONFIGS / "mnist_tiny.toml"), "--out", str(out), "--quiet"])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    for row in ROWS:
        assert set(results[row]) >= {"mean", "ci95", "per_model"}
        assert len(results[row]["per_model"]) == 3
        # the row's summary is the shared 95% t-interval of its per-model values
        mean, half, n = mean_interval(results[row]["per_model"])
        assert n == 3 and results[row]["mean"] == pytest.approx(mean, rel=1e-12)
        assert results[row]["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-12)
    assert len(results["student_aux"]["cosine_per_epoch"]) == 2
    assert results["data"]["n_train"] == 4000 and results["data"]["n_test"] == 1000
    assert results["runs"][0]["teacher_epochs"] == 2
    assert (out / "mnist.png").stat().st_size > 0
    assert (out / "table.csv").read_text().startswith("aux_logits,student_noise,row,mean")
    printed = capsys.readouterr().out
    assert "student_aux" in printed and "cross_all" in printed


def test_sweeps_from_flags_on_idx_files(tmp_path, write_digits):
    write_digits(tmp_path, n_train=40, n_test=20, compress=True)
    out = tmp_path / "out"
    argv = ["mnist", "--config", str(CONFIGS / "mnist_tiny.toml"), "--mnist-dir", str(tmp_path)]
    argv += ["--out", str(out), "--aux-logits", "1", "2", "--student-noise", "0", "0.1"]
    argv += ["--students", "aux", "all", "--models", "2", "--quiet"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["aux_logits"] for run in results["runs"]] == [1, 2]
    first = results["runs"][0]["rows"]
    assert set(first) == {
        "reference",
        "teacher",
        "student_aux@s=0",
        "student_all@s=0",
        "student_aux@s=0.1",
        "student_all@s=0.1",
    }
    # m = 1: the aux-only student is its reference, model for model
    assert first["student_aux@s=0"]["per_model"] == first["reference"]["per_model"]
    assert results["data"]["n_train"] == 40
    sweeps = runpy.run_path(
        str(Path(__file__).resolve().parents[3] / "experiments" / "mnist_sweeps.py")
    )
    lines = sweeps["compare"](str(out / "table.csv")).splitlines()
    assert lines[0].split()[0] == "aux_logits" and len(lines) == 3  # header, m = 1, m = 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--models", "1"], "cross-model control"),
        (["--teacher-epochs", "many"], "teacher_epochs"),
        (["--mnist-dir", "/nonexistent/mnist"], "not a directory"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, extra, message):
    argv = ["mnist", "--config", str(CONFIGS / "mnist_tiny.toml"), "--out", str(tmp_path), *extra]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_missing_idx_file_is_named_by_the_cli(tmp_path, capsys, write_digits):
    write_digits(tmp_path)
    (tmp_path / IDX_FILES["train_images"]).unlink()
    assert main(["mnist", "--mnist-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("models = 2\nlearning_rate = 0.1\n")
    assert main(["mnist", "--config", str(config), "--out", str(tmp_path)]) == 2
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["mnist_default.toml", "mnist_aux_sweep.toml", "mnist_noise_sweep.toml"]
)
def test_shipped_configs_parse(name):
    import argparse

    from sublim_theory.cli.mnist import register
    from sublim_theory.studies.mnist.study import build_configs, resolve_settings

    parser = argparse.ArgumentParser()
    register(parser)
    args = parser.parse_args(["--config", str(CONFIGS / name)])
    settings, mnist_dir = resolve_settings(args.config, vars(args), args.mnist_dir, args.dataset)
    configs = build_configs(settings)
    assert mnist_dir is None and all(c.models == 10 for c in configs)
    assert all(c.lr == 3e-4 and c.batch_size == 1024 and c.student_epochs == 5 for c in configs)
