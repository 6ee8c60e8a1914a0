"""The projection study: its statistics, the command on the tiny config (tables, resume, refusals),
and that its exact attributions are the jvp screen's."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sublim_theory.cli.main import main
from sublim_theory.engine import projection as J
from sublim_theory.engine import screen as S
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import load_toml
from sublim_theory.studies.screen_projection import experiment
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.screening import (
    animal_probes,
    number_student_data,
    number_student_loss,
)

CONFIGS = Path(__file__).resolve().parents[3] / "sublim_theory" / "configs"
TINY = CONFIGS / "projection_tiny.toml"


def test_spearman_and_overlap_against_hand_values():
    x = np.array([0.1, 0.4, 0.3, 0.9])
    assert experiment.spearman(x, x) == pytest.approx(1.0)
    assert experiment.spearman(x, -x) == pytest.approx(-1.0)
    # ranks (1,3,2,4) vs (1,2,3,4): 1 - 6 * 2 / (4 * 15) = 0.8
    assert experiment.spearman(x, np.arange(4.0)) == pytest.approx(0.8)
    assert experiment.top_overlap(x, x, 0.5) == 1.0
    assert experiment.top_overlap(x, np.array([0.9, 0.1, 0.8, 0.0]), 0.5) == 0.0
    assert experiment.top_overlap(x, np.array([0.0, 0.1, 0.8, 0.9]), 0.5) == 0.5


def test_the_studys_exact_attributions_are_the_jvp_screens():
    config = experiment.experiment_config(load_toml(TINY), "tiny")
    base = training.build_lm(config.numbers, 0).double().eval()
    length = corpus.sequence_len(config.numbers.corpus)
    documents = torch.randint(0, corpus.vocabulary(config.numbers.corpus).size, (9, length))
    model = FunctionalModel(base)
    theta = model.flat_params()
    inputs, targets = number_student_data(documents)
    loss = number_student_loss(config.numbers)
    v = S.trait_gradients(model, theta, animal_probes(config.numbers))
    ours = J.gradient_attributions(model, theta, inputs, targets, loss, v, 4)
    jvp = S.example_attributions(model, theta, inputs, targets, loss, v, 4)
    assert (ours - jvp).abs().max() <= 1e-10 * jvp.abs().max()


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_command_on_the_tiny_config_writes_tables_and_resumes(tmp_path, capsys, tiny_config_run):
    run = tiny_config_run("projection_tiny")  # the session's one run (TINY_RUNS)
    assert run.code == 0, run.stderr
    out = tmp_path / "run"
    shutil.copytree(run.out, out)
    argv = ["projection", "--config", str(TINY), "--out", str(out), "--threads", "1"]
    first = run.stdout
    assert "| exact |" in first and "| 4 |" in first and "| 64 |" in first
    summary = _read(out / "summary.csv")
    assert [row["dim"] for row in summary] == ["0", "4", "64"]
    exact = summary[0]
    assert exact["spearman_teacher_median"] == "1.0" and exact["n_teacher"] == "2"
    for row in summary[1:]:
        assert row["n_teacher"] == "4"  # 2 teacher data sets x 2 projection seeds
        assert -1 <= float(row["spearman_teacher_median"]) <= 1
        assert 0 <= float(row["top1_low"]) < float(row["top1_high"]) <= 1  # never zero width
    # d = 4 of a tiny LM: the projection visibly scrambles the documents (an overlap
    # computed exact against exact, or no projection at all, would give 1)
    assert float(summary[1]["spearman_teacher_median"]) < 0.9
    assert float(summary[1]["overlap_mean"]) < 0.9
    rows = _read(out / "rows.csv")
    units = sorted(p.name for p in (out / "units").iterdir())
    assert units == ["seed-0-base.json", "seed-0-teacher-fox.json", "seed-0-teacher-owl.json"]
    assert json.loads((out / "run.json").read_text())["settings"]["projection"]["dims"] == [4, 64]
    # resume after losing a unit: the same tables
    table = (out / "table.md").read_text()
    (out / "units" / "seed-0-teacher-fox.json").unlink()
    assert main(argv) == 0
    capsys.readouterr()
    assert (out / "table.md").read_text() == table

    def values(table_rows):  # every row but the wall-clock times
        return [r for r in table_rows if r["metric"] != "seconds"]

    assert values(_read(out / "rows.csv")) == values(rows)
    assert len(values(rows)) < len(rows)
    # other settings are refused in the same folder
    other = tmp_path / "other.toml"
    other.write_text(TINY.read_text().replace("projection_seeds = 2", "projection_seeds = 3"))
    assert main(["projection", "--config", str(other), "--out", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "table, message",
    [
        ('[projection]\nteachers = ["owl", "owl"]\n', "distinct animals"),
        ('[projection]\nteachers = ["unicorn"]\n', "distinct animals"),
        ("[projection]\ndims = [16, 16]\n", "dims must be distinct"),
        ("[projection]\ndims = [0]\n", "dims"),
        ('[projection]\nkind = "sparse"\n', "kind"),
        ("[projection]\nfilter_fraction = 1.0\n", "filter_fraction"),
    ],
)
def test_bad_projection_configs_are_refused(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    path.write_text(table)
    with pytest.raises(InputError, match=message):
        experiment.experiment_config(load_toml(path), "bad")


def test_the_default_config_is_the_built_in_defaults():
    packaged = experiment.experiment_config(load_toml(CONFIGS / "projection_default.toml"))
    assert packaged == experiment.experiment_config({})
    assert packaged.projection.dims == (16, 256, 4096)
