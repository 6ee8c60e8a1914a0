"""Every experiment command speaks the same flags and goes through the one run layer (issue 11).

``--out DIR``, ``--config FILE``, ``--device {auto,cpu,cuda}``, ``--seed S`` (the first or
master seed) and ``--seeds N`` (how many) mean the same in every command that takes them, and
every command that writes holds its output folder (``runs.OutputFolder``) for the whole run.
"""

import argparse
from pathlib import Path

import pytest

import sublim_theory.cli.demo as demo_command
import sublim_theory.cli.derive as derive_command
import sublim_theory.studies.bench.experiment as bench
import sublim_theory.studies.mnist.study as mnist_command
from sublim_theory.cli.main import build_parser, main
from sublim_theory.harness.runs import CONFIG_DIR, OutputFolder
from sublim_theory.studies.numbers import experiment as numbers_experiment

CONFIGS = CONFIG_DIR


def _options(command):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        option: action
        for action in subparsers.choices[command]._actions
        for option in action.option_strings
    }


@pytest.mark.parametrize(
    "command", ["mnist", "numbers", "bench", "demo", "finetune", "defenses", "dynamics"]
)
def test_experiment_commands_share_out_and_device(command):
    options = _options(command)
    assert options["--out"].type is Path
    assert tuple(options["--device"].choices) == ("auto", "cpu", "cuda")


@pytest.mark.parametrize(
    "command",
    ["mnist", "numbers", "demo", "sweep", "screen", "rules", "finetune", "defenses", "dynamics"],
)
def test_config_takes_a_path_or_a_packaged_name_and_refuses_anything_else(command, tmp_path):
    parse = _options(command)["--config"].type
    assert parse("init_distance_tiny") == CONFIG_DIR / "init_distance_tiny.toml"
    assert parse("mnist_tiny.toml") == CONFIG_DIR / "mnist_tiny.toml"
    mine = tmp_path / "mine.toml"
    mine.write_text("")
    assert parse(str(mine)) == mine
    for bad in ("no_such_config", str(tmp_path / "absent.toml"), str(tmp_path)):
        with pytest.raises(argparse.ArgumentTypeError, match="packaged config: .*init_distance"):
            parse(bad)


def test_seed_is_the_first_seed_and_seeds_a_count():
    numbers, mnist, bench_options = _options("numbers"), _options("mnist"), _options("bench")
    assert numbers["--seed"].dest == numbers["--first-seed"].dest == "seed"  # old name kept
    assert numbers["--seed"].default == 0 and mnist["--seed"].dest == "seed"
    for options in (numbers, bench_options):  # a count, so a negative one never parses
        with pytest.raises(argparse.ArgumentTypeError):
            options["--seeds"].type("-1")


def _never(*args, **kwargs):
    raise AssertionError("computed although the output folder is in use")


@pytest.mark.parametrize(
    "argv",
    [
        ["mnist", "--config", str(CONFIGS / "mnist_tiny.toml")],
        ["numbers", "--config", str(CONFIGS / "numbers_tiny.toml"), "--seeds", "1"],
        ["bench", "--size", "tiny", "--archs", "mlp"],
        ["demo"],
        ["derive"],
        ["rules", "--config", "rules_tiny"],
        ["finetune", "--config", "finetune_tiny", "--seeds", "1"],
        ["defenses", "--config", "defenses_tiny", "--seeds", "1"],
        ["dynamics", "--config", "mnist_dynamics_tiny"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_writing_command_locks_its_folder(argv, tmp_path, monkeypatch, capsys):
    for module, name in (
        (mnist_command, "load_mnist"),
        (mnist_command, "run_experiment"),
        (numbers_experiment, "run_seed"),
        (bench, "build_case"),
        (bench, "bench_seeds"),
        (bench, "bench_mnist_training"),
        (demo_command, "check"),
        (derive_command, "export_documents"),
    ):
        monkeypatch.setattr(module, name, _never)
    out = tmp_path / "out"
    with OutputFolder(out, "another run"):
        assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in use" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["numbers", "--config", "numbers_tiny", "--seeds", "1"],
        ["finetune", "--config", "finetune_tiny", "--seeds", "1"],
        ["defenses", "--config", "defenses_tiny", "--seeds", "1"],
    ],
    ids=lambda argv: argv[0],
)
def test_tiny_lm_commands_refuse_a_cache_that_is_a_file_before_training(argv, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    assert main([*argv, "--out", str(tmp_path / "out"), "--cache", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err
    assert cache.read_text() == "not a folder"
