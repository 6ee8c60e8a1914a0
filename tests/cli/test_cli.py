import json

import pytest

from sublim_theory.cli.main import main


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
    assert len(lines) == 2 + 4 * 3 + 1  # header, column names, every arch x loss, the legend
    assert "KL tau = 2" in lines[0] and "eps*?" in lines[1]
    assert lines[-1].startswith("eps*: root of the truncated quadratic")


def test_check_kl_defaults_to_temperature_two_so_it_differs_from_cross_entropy(capsys):
    """At tau = 1, KL has the soft cross-entropy's gradient: their reports would coincide."""
    common = ["check", "--arch", "mlp", "--width", "4", "--inputs", "8", "--json"]
    reports = {}
    for name, extra in [("ce", ["--loss", "softmax_ce"]), ("kl1", ["--loss", "kl"])]:
        argv = common + extra + (["--temperature", "1"] if name == "kl1" else [])
        assert main(argv) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    assert main([*common, "--loss", "kl"]) == 0
    kl2 = json.loads(capsys.readouterr().out)
    assert kl2["temperature"] == 2.0
    # tau = 1: the same update as cross-entropy, to float64 rounding of O(1) quantities
    assert abs(reports["kl1"]["A"] - reports["ce"]["A"]) <= 1e-12 * abs(reports["ce"]["A"])
    # tau = 2: A scales by about 1/tau^2 (M = tau^-2 (diag p_tau - p_tau p_tau^T)), far from 1x
    assert kl2["A"] < 0.5 * reports["ce"]["A"]


def test_check_json_reports_whether_eps_star_is_trusted(capsys):
    argv = ["check", "--arch", "cnn", "--loss", "squared", "--width", "4", "--inputs", "8"]
    assert main([*argv, "--depth", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report["eps_star_trusted"], bool) and report["eps_star_note"]
    if report["eps_star"] is None:
        assert "not a guarantee" in report["eps_star_note"]
    else:
        assert report["eps_star_trusted"] == (abs(report["eps_star_residual"]) <= 0.1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "--eps", "0"], "eps must be a finite number > 0"),
        (["check", "--eps", "nan"], "eps must be a finite number > 0"),
        (["check", "--aux", "-1"], "--aux must be >= 0"),
        (["check", "--inputs", "0"], "--inputs must be >= 1"),
        (["check", "--width", "0"], "must be a positive integer"),
        (["check", "--loss", "kl", "--temperature", "0"], "KL temperature tau must be > 0"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_choice_is_rejected_by_argparse(capsys):
    assert main(["check", "--arch", "rnn"]) == 2
    assert "invalid choice: 'rnn'" in capsys.readouterr().err


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("check", "derive", "sweep", "plot", "mnist", "numbers", "bench", "demo"):
        assert command in out
