"""The two 2026 claims on the tiny LM (sublim_theory.studies.claims, `adamstate`, `coverage`).

Oracles: torch's Adam with a transplanted state equals a hand-written float64 Adam; with zero
gradients the step is the closed form -lr m_hat / (sqrt(v_hat) + eps); coverage equals the cosine
of explicitly flattened float64 parameter vectors; Spearman's rho equals scipy's.
"""

import copy
import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.claims import adam_state, coverage, report
from sublim_theory.studies.claims.config import load_config
from sublim_theory.studies.numbers.experiment import sampled_numbers
from sublim_theory.testbeds.lm import corpus, training

TINY = CONFIG_DIR / "claims_tiny.toml"
B1, B2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
QUIET = {"log": lambda *a, **k: None}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _state(net: nn.Module, step: int) -> adam_state.AdamState:
    generator = torch.Generator().manual_seed(1)
    params = list(net.parameters())
    return adam_state.AdamState(
        [torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.1 for p in params],
        [torch.rand(p.shape, generator=generator, dtype=torch.float64) * 0.01 for p in params],
        step,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, adam, cov = load_config(TINY)
    cache = tmp_path_factory.mktemp("cache")
    base, _ = training.cached_base(config, training.BaseSpec(0, 0, 0), cache, **QUIET)
    return config, adam, cov, base, cache


@pytest.mark.parametrize("arm", adam_state.ARMS)
@pytest.mark.parametrize("step_count", ["teacher", "fresh"])
def test_transplanted_adam_equals_hand_written_float64_adam(arm, step_count):
    net, lr, t_teacher = _net(), 0.05, 7
    state = _state(net, t_teacher)
    optimizer = adam_state.transplant(net, state, arm, lr, step_count)
    x = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(5, 3)
    # the hand-written Adam: plain tensors, float64, the formulas of the module docstring
    m = [s if arm in ("first", "both") else torch.zeros_like(s) for s in state.first]
    v = [s if arm in ("second", "both") else torch.zeros_like(s) for s in state.second]
    t = t_teacher if step_count == "teacher" else 0
    theta = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        loss = net(x).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.detach().clone() for p in net.parameters()]
        optimizer.step()
        t += 1
        m = [B1 * mi + (1 - B1) * g for mi, g in zip(m, grads)]
        v = [B2 * vi + (1 - B2) * g * g for vi, g in zip(v, grads)]
        theta = [
            th - lr * (mi / (1 - B1**t)) / ((vi / (1 - B2**t)).sqrt() + EPS)
            for th, mi, vi in zip(theta, m, v)
        ]
        for p, expected in zip(net.parameters(), theta):
            # float64 rounding of a few operations per coordinate on O(1) values
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("arm", ["first", "both"])
def test_zero_gradient_student_moves_by_the_transplanted_first_moment(arm):
    # one parameter, m_T = 0.2, v_T = 0.04 (or 0), teacher counter 10, lr 0.1, gradient 0:
    # step j has m = 0.9^j 0.2, v = 0.999^j v_T, t = 10 + j and moves theta by
    # -lr * (m / (1 - 0.9^t)) / (sqrt(v / (1 - 0.999^t)) + 1e-8)
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    holder = nn.Module()
    holder.p = p
    state = adam_state.AdamState(
        [torch.tensor([0.2], dtype=torch.float64)], [torch.tensor([0.04], dtype=torch.float64)], 10
    )
    optimizer = adam_state.transplant(holder, state, arm, 0.1, "teacher")
    v0 = 0.04 if arm == "both" else 0.0
    expected = 0.0
    for j in (1, 2, 3):
        (0.0 * p.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        m_hat = 0.9**j * 0.2 / (1 - 0.9 ** (10 + j))
        v_hat = 0.999**j * v0 / (1 - 0.999 ** (10 + j))
        expected -= 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
        assert float(p.detach()) == pytest.approx(expected, rel=1e-13)
    if arm == "both":
        # by hand: step 1 is 0.1 * (0.18 / 0.686189) / sqrt(0.03996 / 0.0109452) = 0.0137286,
        # step 2 0.1 * (0.162 / 0.717570) / sqrt(0.03992 / 0.0119342) = 0.0123439,
        # step 3 0.1 * (0.1458 / 0.745813) / sqrt(0.03988 / 0.0129223) = 0.0111280
        assert expected == pytest.approx(-(0.0137286 + 0.0123439 + 0.0111280), rel=1e-5)
    else:  # v = 0: each step is lr * m_hat / eps, of order 10^6
        assert expected < -1e6


def test_teacher_with_state_is_finetune_teacher_and_the_arms_differ(tiny):
    config, adam, _, base, cache = tiny
    teacher, state = adam_state.teacher_with_state(base, config)
    reference = training.finetune_teacher(base, config)
    for a, b in zip(teacher.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    assert state.step == config.teacher.steps
    assert any(m.abs().sum() > 0 for m in state.first)
    rows = adam_state.run_seed(
        config, adam.checkpoints, adam.lr, adam.step_count, 0, cache, **QUIET
    )
    at = {(r["arm"], r["k"]): r["log_p"] for r in rows}
    base_log_p = at["base", 0]
    for arm in adam_state.ARMS:
        assert at[arm, 0] == base_log_p  # the cut: the student is the base in every arm
    assert at["both", 1] != at["neither", 1]
    # the neither arm with the teacher's counter is plain Adam on the base's numbers
    assert math.isfinite(at["neither", adam.checkpoints[-1]])


def test_transplant_refuses_bad_input():
    net = _net()
    with pytest.raises(InputError, match="unknown Adam-state arm"):
        adam_state.transplant(net, _state(net, 3), "half", 0.1, "teacher")
    with pytest.raises(InputError, match="step_count"):
        adam_state.transplant(net, _state(net, 3), "both", 0.1, "late")
    with pytest.raises(InputError, match="does not match"):
        adam_state.transplant(nn.Linear(2, 2).double(), _state(net, 3), "both", 0.1, "teacher")


def test_coverage_is_the_explicit_float64_cosine_of_the_first_step(tiny):
    config, _, _, base, _ = tiny
    teacher = training.finetune_teacher(base, config)
    data = sampled_numbers(base, config, 0)[0]
    one = dataclasses.replace(config, student=dataclasses.replace(config.student, steps=1))
    student, first = coverage.train_channel(base, data, one, 5, None)
    # explicit: every parameter flattened by hand into numpy float64 vectors
    names = [n for n, _ in base.named_parameters()]
    b, s, t = (dict(m.named_parameters()) for m in (base, student, teacher))
    step = np.concatenate(
        [(s[n].detach().double() - b[n].detach().double()).numpy().ravel() for n in names]
    )
    disp = np.concatenate(
        [(t[n].detach().double() - b[n].detach().double()).numpy().ravel() for n in names]
    )
    explicit = float(step @ disp / math.sqrt((step @ step) * (disp @ disp)))
    value = coverage.coverage(first, training.flat(teacher) - training.flat(base))
    assert value == pytest.approx(explicit, abs=1e-12)
    assert abs(value) > 1e-6  # a real angle, not a degenerate 0


def test_full_channel_is_train_student_and_masking_zeroes_the_trait_row(tiny):
    config, _, _, base, _ = tiny
    data = sampled_numbers(base, config, 0)[0]
    student, _ = coverage.train_channel(base, data, config, 9, None)
    reference = training.train_student(base, data, config, 9, labels="sampled").model
    for a, b in zip(student.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    token = corpus.vocabulary(config.corpus).animal("owl")
    model = copy.deepcopy(base)
    loss_fn = coverage.masked_example_loss(config, token)
    loss = loss_fn(model(data[:, :-1]), data[:, 1:]).mean()
    loss.backward()
    assert torch.all(model.head.weight.grad[token] == 0) and model.head.bias.grad[token] == 0
    assert model.head.weight.grad[token + 1].abs().sum() > 0
    # the masked forecast is the engine's on the masked loss: it differs from the full one
    full = coverage.forecast(base, data, config, "owl", None, 30)
    masked = coverage.forecast(base, data, config, "owl", token, 30)
    assert math.isfinite(full) and math.isfinite(masked) and full != masked


def test_spearman_interval_matches_scipy_and_bonett_wright():
    from scipy.stats import spearmanr

    x = [0.3, 1.2, -0.5, 2.2, 0.9, 1.1, -1.3, 0.0]
    y = [0.1, 0.8, 0.2, 1.9, 0.4, 1.5, -0.7, -0.2]
    rho, low, high, n = report.spearman_interval(x, y)
    assert n == 8 and rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    se = math.sqrt((1 + rho**2 / 2) / 5)
    assert low == pytest.approx(math.tanh(math.atanh(rho) - 1.959963984540054 * se), abs=1e-12)
    assert low < rho < high
    assert math.isnan(report.spearman_interval([1, 2, 3], [3, 2, 1])[0])  # n < 4


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[adam_state]\ncheckpoints = [1, 5]\n")
    with pytest.raises(InputError, match="start at 0"):
        load_config(bad)
    bad.write_text('[coverage]\nanimals = ["unicorn"]\n')
    with pytest.raises(InputError, match="not in"):
        load_config(bad)
    bad.write_text('[adam_state]\nstep_count = "later"\n')
    with pytest.raises(InputError):
        load_config(bad)


@pytest.mark.parametrize("command", ["adamstate", "coverage"])
def test_command_tiny_run_resume_and_bad_input(command, tmp_path, capsys, tiny_config_run):
    run = tiny_config_run(f"claims_tiny:{command}")  # the session's one run (TINY_RUNS)
    assert run.code == 0, run.stderr
    out = tmp_path / "run"
    shutil.copytree(run.out, out)
    args = [command, "--config", str(TINY), "--seeds", "2", "--out", str(out)]
    args += ["--cache", str(run.work / "cache"), "--threads", "1"]
    table = (out / "table.md").read_text()
    assert "does not test their LLM setting" in table and "arXiv 26" in table
    results = (out / "results.csv").read_text()
    # resume: the second seed's record removed, the rerun recomputes it only; same table
    (out / "seeds" / "seed-1.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert f"{command} 0: stored in" in capsys.readouterr().err
    assert (out / "table.md").read_text() == table
    assert (out / "results.csv").read_text() == results
    bad = tmp_path / "bad.toml"
    bad.write_text("[adam_state]\ncheckpoints = [0, 0]\n")
    assert main([command, "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "increase" in capsys.readouterr().err
