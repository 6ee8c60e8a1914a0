import json

import pytest

from sublim_theory.cli import main


def test_check_json_reports_positive_cosine_agreeing_with_first_order(capsys):
    assert main(["check", "--arch", "mlp", "--loss", "kl", "--eps", "1e-4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cos_exact_teacher"] > 0
    assert abs(report["cos_exact_teacher"] - report["cos_first_order_teacher"]) < 1e-3
    assert report["dtype"] == "float64" and report["loss"] == "kl"


def test_check_with_auxiliary_outputs(capsys):
    assert main(["check", "--arch", "cnn", "--aux", "3", "--json", "--width", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loss"] == "softmax_ce[outputs=[10, 11, 12]]"
    assert report["teacher_loss_change_exact"] < 0


def test_check_all_prints_a_table(capsys):
    assert main(["check", "--all", "--width", "4", "--depth", "1", "--inputs", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 4 * 3  # a header line, the column names, every arch x loss


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "--eps", "0"], "eps must be a finite number > 0"),
        (["check", "--eps", "nan"], "eps must be a finite number > 0"),
        (["check", "--aux", "-1"], "--aux must be >= 0"),
        (["check", "--inputs", "0"], "--inputs must be >= 1"),
        (["check", "--width", "0"], "must be a positive integer"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--arch", "rnn"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'rnn'" in capsys.readouterr().err


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("check", "derive", "sweep", "plot", "mnist", "numbers", "bench", "demo"):
        assert command in out
