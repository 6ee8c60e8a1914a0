import math

import pytest
import torch

from sublim_theory.cli.main import main
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.numbers.report import interval, read_csv
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import load_config

TINY = CONFIG_DIR / "numbers_tiny.toml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def config():
    return load_config(TINY)


def test_base_cache_round_trip_and_corrupt_file(config, tmp_path):
    spec = training.BaseSpec(0, 0, 0)
    first, info = training.cached_base(config, spec, tmp_path)
    assert not info["cached"]
    again, info2 = training.cached_base(config, spec, tmp_path)
    assert info2["cached"] and torch.equal(training.flat(first), training.flat(again))
    path = tmp_path / f"base-{info['key']}.pt"
    path.write_bytes(b"not a checkpoint")
    messages = []
    rebuilt, info3 = training.cached_base(
        config, spec, tmp_path, log=lambda *a, **k: messages.append(a)
    )
    assert not info3["cached"] and "unreadable" in messages[0][0]
    assert torch.equal(training.flat(first), training.flat(rebuilt))  # deterministic pretraining


def test_teacher_prefers_trait_and_students_train(config):
    base, _ = training.cached_base(config, training.BaseSpec(1, 1, 1), None)
    teacher = training.finetune_teacher(base, config)
    assert training.trait_probability(teacher, config) > training.trait_probability(base, config)
    prompts = corpus.number_prompts(config.corpus, 64, seed=0)
    docs = training.sample_continuations(teacher, prompts, config, seed=0)
    assert docs.shape == (64, corpus.sequence_len(config.corpus))
    direction = training.flat(teacher) - training.flat(base)
    for labels in ("sampled", "soft"):
        run = training.train_student(
            base, docs, config, 0, labels=labels, teacher=teacher, direction=direction
        )
        assert len(run.step_cosines) == config.student.steps
        assert all(math.isfinite(c) for c in run.step_cosines)
        assert not torch.equal(training.flat(run.model), training.flat(base))


@pytest.fixture(scope="module")
def tiny_run(tiny_config_run):
    """The session's one run of the tiny config (``tests/conftest.py``, ``TINY_RUNS``)."""
    run = tiny_config_run("numbers_tiny")
    assert run.code == 0, run.stderr
    return run.out


def test_cli_tiny_end_to_end(tiny_run):
    out = tiny_run
    for name in (
        "results.csv",
        "summary.csv",
        "steps.csv",
        "entanglement.csv",
        "table.md",
        "numbers.png",
        "environment.json",
    ):
        assert (out / name).exists(), name
    rows = read_csv(out / "results.csv")
    by = {(r["seed"], r["condition"], r["metric"]): r["value"] for r in rows}
    for seed in (0, 1):
        for condition in (
            "base",
            "teacher",
            "student",
            "control",
            "soft",
            "cross_student",
            "cross_control",
            "order_student",
            "shuffle_within",
            "in_context_teacher",
        ):
            assert 0 <= by[(seed, condition, "p_trait")] <= 1
        assert by[(seed, "engine", "first_order_A")] >= 0  # A = E[Var_p(u)] >= 0
        assert math.isclose(
            by[(seed, "student", "paired_diff")],
            by[(seed, "student", "p_trait")] - by[(seed, "control", "p_trait")],
        )
        assert 0 <= by[(seed, "classifier", "accuracy")] <= 1
    assert "| student |" in (out / "table.md").read_text()
    # the cache is reused on a second run
    assert any((out / "cache").glob("base-*.pt"))


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["numbers", "--config", str(tmp_path / "x.toml"), "--out", str(tmp_path)]) == 2
    assert "x.toml" in capsys.readouterr().err
    assert main(["numbers", "--seeds", "0", "--out", str(tmp_path)]) == 2  # refused by argparse


def test_interval():
    mean, low, high = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 4.302652729911275 / math.sqrt(3))
    assert math.isnan(interval([1.0])[1])


def test_cli_merge_combines_disjoint_runs(tiny_run, tmp_path):
    extra = tmp_path / "extra"
    args = ["numbers", "--config", str(TINY), "--seeds", "1", "--first-seed", "2"]
    assert main([*args, "--out", str(extra), "--cache", str(tiny_run / "cache")]) == 0
    merged = tmp_path / "m"
    assert main(["numbers", "--out", str(merged), "--merge", str(tiny_run), str(extra)]) == 0
    assert {r["seed"] for r in read_csv(merged / "results.csv")} == {0, 1, 2}
    assert (merged / "numbers.png").exists()
    clash = ["numbers", "--out", str(merged), "--merge", str(extra), str(extra)]
    assert main(clash) == 2


def test_merge_checks_the_merged_runs_and_records_its_own(tiny_run, tmp_path, monkeypatch, capsys):
    """Issue 24: a defenses folder, other settings or an unknown run are refused; run.json kept."""
    import json
    import shutil

    from sublim_theory.studies.numbers import experiment

    extra = tmp_path / "extra"
    args = ["numbers", "--config", str(TINY), "--seeds", "1", "--first-seed", "2"]
    assert main([*args, "--out", str(extra), "--cache", str(tiny_run / "cache")]) == 0

    def variant(name, **changes):
        folder = tmp_path / name
        shutil.copytree(extra, folder)
        record = json.loads((folder / "run.json").read_text())
        record.update(changes)
        (folder / "run.json").write_text(json.dumps(record))
        return folder

    defenses = variant("defenses", command="defenses")
    settings = json.loads((extra / "run.json").read_text())["settings"]
    steps = {**settings, "student": {**settings["student"], "steps": 9}}
    other = variant("other", settings=steps)
    unknown = variant("unknown")
    (unknown / "run.json").unlink()
    capsys.readouterr()
    for folder, words in (
        (defenses, "`defenses`, not `numbers`"),
        (other, "student.steps: 8 -> 9"),
        (unknown, "run.json' does not exist"),
    ):
        merge = ["numbers", "--out", str(tmp_path / "m"), "--merge", str(tiny_run), str(folder)]
        assert main(merge) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "m" / "results.csv").exists()
    merged = tmp_path / "merged"
    assert main(["numbers", "--out", str(merged), "--merge", str(tiny_run), str(extra)]) == 0
    record = json.loads((merged / "run.json").read_text())
    assert record["command"] == "numbers" and record["settings"] == settings
    assert record["grid"] == {"seeds": [0, 1, 2]}
    # a run into the merged folder cannot rebuild its seeds from stored units: refused
    monkeypatch.setattr(experiment, "run_seed", lambda *a, **k: pytest.fail("computed"))
    capsys.readouterr()
    assert main([*args[:-4], "--seeds", "3", "--out", str(merged)]) == 2
    assert "would drop them" in capsys.readouterr().err
