"""``mnist`` studies: ``[[cells]]`` of overrides, shared teachers, per-model rows and summaries."""

import csv

import pytest

import sublim_theory.studies.mnist.experiment as experiment
import sublim_theory.studies.mnist.study as mnist_command
from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.harness.records import mean_interval
from sublim_theory.harness.runs import CONFIG_DIR, load_toml

TINY = """
models = 2
aux_logits = 3
hidden = [16]
batch_size = 8
teacher_epochs = 2
student_epochs = 1
noise_images = 16
students = ["aux", "cross_aux"]
"""
CELLS = """
[[cells]]

[[cells]]
student_optimizer = "signsgd"
student_lr = 1e-3

[[cells]]
lr = 1e-3
"""


@pytest.fixture
def digits(tmp_path, write_digits):
    return write_digits(tmp_path, 12, 6)


def _run(tmp_path, digits, text, out="out"):
    config = tmp_path / "study.toml"
    config.write_text(text)
    argv = ["mnist", "--config", str(config), "--mnist-dir", str(digits), "--out"]
    return main([*argv, str(tmp_path / out), "--quiet"])


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cells_share_teachers_and_write_per_model_rows(tmp_path, digits, monkeypatch):
    trained = []
    real = experiment.train_teachers

    def counting(config, *args):
        trained.append(config.lr)
        return real(config, *args)

    monkeypatch.setattr(experiment, "train_teachers", counting)
    assert _run(tmp_path, digits, TINY + CELLS) == 0
    # baseline and signsgd differ only in the students: one teacher training for both
    assert trained == [3e-4, 1e-3]
    rows = _rows(tmp_path / "out" / "models.csv")
    cells = ["baseline", "student_optimizer=signsgd,student_lr=0.001", "lr=0.001"]
    assert list(dict.fromkeys(r["cell"] for r in rows)) == cells
    assert [r["factor"] for r in rows if r["model"] == "0" and r["row"] == "teacher"] == [
        "baseline",
        "student_optimizer",
        "lr",
    ]
    assert {r["level"] for r in rows if r["cell"] == cells[1]} == {"signsgd/0.001"}
    assert len(rows) == 3 * 4 * 2  # cells x (reference, teacher, 2 students) x models

    def values(cell, row, key="accuracy"):
        return [float(r[key]) for r in rows if r["cell"] == cell and r["row"] == row]

    assert values(cells[0], "teacher") == values(cells[1], "teacher")  # the same teachers
    assert values(cells[0], "student_aux", "cosine") != values(cells[1], "student_aux", "cosine")
    assert all(loss >= 0 for loss in values(cells[1], "student_aux", "distillation_loss"))
    table = (tmp_path / "out" / "table.md").read_text()
    mean, half, n = mean_interval(values(cells[1], "student_aux"))
    line = f"| {cells[1]} | student_aux | {mean:.3f} | [{mean - half:.3f}, {mean + half:.3f}] | 2 |"
    assert line in table
    assert (tmp_path / "out" / "study.png").stat().st_size > 0
    assert not (tmp_path / "out" / "table.csv").exists()  # keyed by m and s: not for cells

    # a rerun with one more cell computes only that cell
    calls = []
    monkeypatch.setattr(
        mnist_command, "run_experiment", lambda config, *a: calls.append(config) or 1 / 0
    )
    with pytest.raises(ZeroDivisionError):
        _run(tmp_path, digits, TINY + CELLS + '[[cells]]\ndistillation_loss = "mse"\n')
    assert [c.distillation_loss for c in calls] == ["mse"]


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ("cells = []\n", "non-empty list of tables"),
        ("cells = [1]\n", "non-empty list of tables"),
        ("[[cells]]\nlearning_rate = 1\n", "learning_rate"),
        ("[[cells]]\nstudent_optimizer = 'rmsprop'\n", "student_optimizer"),
        ("[[cells]]\nlr = 1e-3\n[[cells]]\nlr = 1e-3\n", "distinct"),
        ("[[cells]]\ncells = []\n", "cells of its own"),
    ],
)
def test_bad_cells_are_one_line_errors(tmp_path, digits, capsys, cells, message):
    assert _run(tmp_path, digits, TINY + cells) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "name",
    ["mnist_optimizer.toml", "mnist_heads.toml", "mnist_grid.toml", "mnist_grid_more.toml"],
)
def test_study_configs_parse(name):
    settings = dict(load_toml(CONFIG_DIR / name))
    settings.pop("teacher_epochs", None) if settings.get("teacher_epochs") == "auto" else None
    cells = mnist_command.build_cells(settings, name)
    assert all(c.config.noise_images == 60_000 and c.config.student_epochs == 5 for c in cells)
    assert all(c.config.models >= 5 for c in cells)
    assert len({c.name for c in cells}) == len(cells) >= 3


def test_cells_and_m_lists_multiply():
    settings = {"aux_logits": [3, 5], "models": 2, "cells": [{}, {"lr": 1e-3}]}
    names = [c.name for c in mnist_command.build_cells(settings)]
    assert names == [
        "baseline,aux_logits=3",
        "baseline,aux_logits=5",
        "lr=0.001,aux_logits=3",
        "lr=0.001,aux_logits=5",
    ]
    with pytest.raises(InputError, match="cells"):
        mnist_command.build_cells({"cells": {"lr": 1e-3}})


def test_study_markdown_is_mean_and_t_interval_per_cell_and_row():
    from sublim_theory.studies.mnist.report import study_markdown

    base = {"cell": "c", "factor": "f", "level": "1", "aux_logits": 3.0, "row": "student_aux"}
    rows = [
        {**base, "model": float(i), "accuracy": a, "cosine": c, "distillation_loss": 0.5}
        for i, (a, c) in enumerate([(0.2, 0.1), (0.4, 0.2), (0.9, 0.3)])
    ]
    rows.append({**rows[0], "row": "teacher", "cosine": float("nan")})
    # t_{0.975, 2} = 4.302652729911275; sd of (0.2, 0.4, 0.9) with n - 1 = 0.36055512754639896
    half = 4.302652729911275 * 0.36055512754639896 / 3**0.5
    mean = 0.5
    table = study_markdown(rows)
    line = (
        f"| c | student_aux | 0.500 | [{mean - half:.3f}, {mean + half:.3f}] | 3 | +0.2000 | 0.5 |"
    )
    assert line in table.splitlines()
    assert "| c | teacher | 0.200 | - | 1 | - | - |" in table.splitlines()


def test_grid_comparison_places_the_baseline_at_each_factors_default(tmp_path):
    import runpy
    from pathlib import Path

    from sublim_theory.studies.mnist.report import write_models

    script = Path(__file__).resolve().parents[3] / "experiments" / "mnist_sweeps.py"
    compare_study = runpy.run_path(str(script))["compare_study"]
    rows = []
    for cell, factor, level, accuracies in (
        ("baseline", "baseline", "default", (0.5, 0.7)),
        ("lr=0.001", "lr", "0.001", (0.2, 0.4)),
    ):
        for i, accuracy in enumerate(accuracies):
            rows.append(
                dict(cell=cell, factor=factor, level=level, aux_logits=3, row="student_aux")
                | dict(model=i, accuracy=accuracy, cosine=0.1, distillation_loss=0.01)
            )
    write_models(rows, tmp_path / "models.csv")
    lines = compare_study(str(tmp_path / "models.csv")).splitlines()[1:]
    assert [line.split()[:3] for line in lines] == [
        ["lr", "0.0003", "student_aux"],  # the baseline, at the default lr
        ["lr", "0.001", "student_aux"],
    ]
    assert lines[0].split()[3] == "0.600" and "0.551" in lines[0] and "divyat09" in lines[0]
    assert lines[1].split()[3] == "0.300" and "0.702" in lines[1]


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("mnist_heads.toml", {"student_aux", "cross_aux", "randbody_aux", "randaux_aux"}),
        ("mnist_grid.toml", {"student_aux", "cross_aux"}),
        ("mnist_optimizer.toml", {"student_aux", "cross_aux"}),
        ("mnist_optimizer_tune.toml", {"student_aux"}),
        ("mnist_optimizer_long.toml", {"student_aux", "cross_aux"}),
        ("mnist_grid_more.toml", {"student_aux", "cross_aux"}),
    ],
)
def test_study_configs_run_at_tiny_size(tmp_path, digits, name, rows):
    tiny = ["--models", "2", "--hidden", "8", "--batch-size", "8", "--noise-images", "8"]
    tiny += ["--teacher-epochs", "1", "--student-epochs", "1", "--aux-logits", "3", "--quiet"]
    argv = ["mnist", "--config", str(CONFIG_DIR / name), "--mnist-dir", str(digits)]
    assert main([*argv, "--out", str(tmp_path / "out"), *tiny]) == 0
    found = _rows(tmp_path / "out" / "models.csv")
    assert rows <= {r["row"] for r in found}
    # every distilled student recorded a finite, non-negative final distillation loss
    losses = [
        float(r["distillation_loss"]) for r in found if r["row"] not in ("reference", "teacher")
    ]
    assert losses and all(0 <= loss < float("inf") for loss in losses)
