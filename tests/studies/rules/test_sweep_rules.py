"""The rules sweep at tiny size: the CLI writes rules.csv, table.md and rules.png; rows obey
the invariants the theory fixes exactly (a fresh momentum step is the sgd step; fresh rules
do nothing without a teacher at the shared init; no prediction on an independent LoRA base);
a rerun resumes; the table is the CSV's means; bad configs are InputErrors."""

import math

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness.records import mean_interval
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.rules.experiment import (
    COLUMNS,
    expand_rule_jobs,
    load_rules_config,
    read_rules_table,
)
from sublim_theory.studies.rules.report import summarize_rules
from sublim_theory.studies.rules.study import run_rules_sweep

TINY = CONFIG_DIR / "rules_tiny.toml"
NUMERIC = [c for c in COLUMNS[9:] if c not in ("rule",)]


@pytest.fixture(scope="module")
def tiny_run(tiny_config_run):
    """The session's one run of the tiny config (``tests/conftest.py``, ``TINY_RUNS``)."""
    run = tiny_config_run("rules_tiny")
    assert run.code == 0, run.stderr
    return run.out


def test_cli_writes_the_table_summary_and_figure(tiny_run):
    config = load_rules_config(TINY)
    rows = read_rules_table(tiny_run / "rules.csv")
    grid = config.grid
    per_pair = len(grid.teachers) * len(grid.rules)
    assert len(rows) == len(expand_rule_jobs(config)) * len(grid.seeds) * per_pair
    assert (tiny_run / "rules.png").stat().st_size > 0
    lines = (tiny_run / "table.md").read_text().splitlines()
    cells = {(r["teacher"], r["parameterization"], r["placement"], r["student_rule"]) for r in rows}
    assert len([line for line in lines if line.startswith("| ") and "teacher" not in line]) == len(
        cells
    )


def test_rows_obey_the_exact_invariants(tiny_run):
    rows = read_rules_table(tiny_run / "rules.csv")
    by = {(r["key"], r["seed"], r["teacher"], r["student_rule"]): r for r in rows}
    for (key, seed, teacher, rule), row in by.items():
        if rule == "momentum":  # torch starts the buffer at the first gradient
            sgd = by[key, seed, teacher, "sgd"]
            for column in NUMERIC:
                assert row[column] == sgd[column] or (
                    math.isnan(row[column]) and math.isnan(sgd[column])
                ), column
        if row["placement"] == "shared" and rule in ("sgd", "adam", "signsgd"):
            assert row["teacher_loss_change_control"] == 0.0
            assert row["init_distance_abs"] == 0.0
        if row["placement"] == "other_adapter_seed":
            assert row["init_distance_abs"] > 0
        lora_independent = row["placement"] == "independent" and row["rank"] > 0
        assert math.isnan(row["cos_step_prediction"]) == lora_independent
        assert 0 < row["norm_step"] and abs(row["cos_step_teacher"]) <= 1 + 1e-12


def test_rerun_of_a_finished_folder_appends_nothing(tiny_run):
    table = tiny_run / "rules.csv"
    before = table.read_bytes()
    run_rules_sweep(TINY, tiny_run, progress_lines=False)
    assert table.read_bytes() == before


def test_summary_is_the_tables_means(tiny_run):
    rows = read_rules_table(tiny_run / "rules.csv")
    config = load_rules_config(TINY)
    for cell in summarize_rules(rows):
        members = [
            r
            for r in rows
            if (r["teacher"], r["parameterization"], r["placement"], r["student_rule"])
            == (cell["teacher"], cell["parameterization"], cell["placement"], cell["student_rule"])
        ]
        assert len(members) == len(config.grid.architectures) * len(config.grid.seeds)
        expected = mean_interval(r["cos_step_K_v"] for r in members)
        assert cell["cos_step_K_v"][:2] == pytest.approx(expected[:2], nan_ok=True)


@pytest.mark.parametrize(
    "edit,match",
    [
        (("rules = [", 'rules = ["lion", '), "lion"),
        (('"lora2"]', '"lora0"]'), "parameterization"),
        (("seeds = 2", "seeds = [1, 1]"), "repeats"),
        (("n_inputs = 8", "n_inputs = 0"), "n_inputs"),
    ],
)
def test_bad_configs_are_input_errors(tmp_path, edit, match):
    text = TINY.read_text()
    assert edit[0] in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(InputError, match=match):
        load_rules_config(path)
