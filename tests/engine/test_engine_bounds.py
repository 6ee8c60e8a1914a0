"""Numbers that are not numbers are refused, not reported (issue 24 items 5 and 7): an
overflowed step, float16 parameters, LoRA ranks above a layer's size; and the two rule-report
terms the suite missed (the offset term away from the shared init, the control subtraction)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sublim_theory.engine.alignment import TeacherTask, gauss_newton_product
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.report import alignment_report
from sublim_theory.engine.rule_report import rule_report, student_gradients
from sublim_theory.engine.update_rules import make_rule, warmed_state
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import build_model, make_inputs


def problem(seed=0, dtype=torch.float64):
    module = build_model("mlp", 3, in_features=4, width=5, depth=1, seed=seed).to(dtype)
    model = FunctionalModel(module)
    theta = model.flat_params()
    inputs = make_inputs("mlp", 6, in_features=4, seed=seed).to(dtype)
    generator = torch.Generator().manual_seed(50 + seed)
    x_teacher = torch.randn(8, 4, generator=generator, dtype=dtype)
    labels = torch.randint(0, 3, (8,), generator=generator)
    return (
        model,
        theta,
        inputs,
        make_loss("softmax_ce"),
        TeacherTask(F.cross_entropy, x_teacher, labels),
    )


def test_an_overflowed_step_is_refused_not_a_cosine_of_zero():
    model, theta, inputs, loss, task = problem()
    v = task.update(model, theta)
    with pytest.raises(InputError, match=r"step.*sgd.*lr 1e\+308.*overflow") as error:
        rule_report(model, v, inputs, loss, 1e-3, make_rule("sgd", 1e308), teacher=task)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match=r"sgd (step|prediction) \(lr 1e\+308\) has NaN or inf"):
        rule_report(model, 1e10 * v, inputs, loss, 1e-3, make_rule("sgd", 1e308))
    report = rule_report(model, v, inputs, loss, 1e-3, make_rule("sgd", 1e3), teacher=task)
    assert math.isfinite(report.cos_step_teacher) and report.cos_step_teacher != 0.0


def test_float16_parameters_are_refused_by_both_reports():
    model, theta, inputs, loss, task = problem(dtype=torch.float16)
    v = torch.ones_like(theta)
    for call in (
        lambda: rule_report(model, v, inputs, loss, 1e-3, make_rule("sgd", 0.1)),
        lambda: alignment_report(model, v, inputs, loss, 1e-3),
    ):
        with pytest.raises(InputError, match="torch.float16.*use float32 or float64"):
            call()
    bf16 = FunctionalModel(build_model("mlp", 3, in_features=4, width=5, depth=1).bfloat16())
    with pytest.raises(InputError, match="bfloat16"):
        rule_report(bf16, bf16.flat_params(), inputs.bfloat16(), loss, 1e-3, make_rule("sgd", 1))


def test_lora_ranks_above_the_smallest_adapted_dimension_are_refused_unless_asked():
    base = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with pytest.raises(
        InputError, match=r"rank 4 exceeds the smallest adapted dimension 3 \(layer '2'"
    ):
        add_lora(base, 4)
    with pytest.raises(InputError, match="rank 999"):
        add_lora(build_model("mlp", 4, in_features=4, width=4, depth=1), 999)
    add_lora(base, 3)  # r = min(d_in, d_out): allowed
    add_lora(base, 4, targets=["0"])  # the 4 x 6 layer alone: its smallest dimension is 4
    wide = add_lora(base, 64, beyond_full_rank=True, seed=1)  # asked for: allowed
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(wide(x), base(x))  # B0 = 0: still the base network


def test_lora_default_alpha_is_the_rank_so_the_scale_is_one():
    base = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    adapted = add_lora(base, 2, seed=0)
    params = dict(adapted.named_parameters())
    with torch.no_grad():
        params["0.lora_B.default.weight"].normal_()
    a, b = params["0.lora_A.default.weight"], params["0.lora_B.default.weight"]
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = torch.tanh(x @ (base[0].weight + b @ a).T + base[0].bias) @ base[2].weight.T
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), expected + base[2].bias, rtol=1e-12, atol=1e-12)


def test_the_prediction_away_from_the_shared_init_is_minus_k_of_eps_v_minus_delta():
    """theta_S0 = theta_0 + Delta with Delta ~ eps: the first-order gradient is
    -(eps K v - K Delta) (the offset term enters with a minus inside), so the sgd prediction
    follows the exact step: its residual falls like eps^2 when eps and Delta halve together."""
    model, theta, inputs, loss, task = problem()
    v = task.update(model, theta)
    direction = torch.randn(
        theta.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    direction = direction / direction.norm() * v.norm()
    residuals = []
    for eps in (1e-3, 5e-4):
        start = theta + eps * direction
        gradients = student_gradients(model, v, inputs, loss, eps, student_init=start)
        k_delta = gauss_newton_product(model, theta, inputs, loss, start - theta)
        torch.testing.assert_close(
            gradients.first_order_gradient, -(eps * gradients.k_v - k_delta), rtol=1e-12, atol=0
        )
        report = rule_report(model, v, inputs, loss, eps, make_rule("sgd", 1.0), student_init=start)
        assert report.cos_step_prediction > 0.999
        residuals.append(report.prediction_residual)
    assert residuals[1] < 0.7 * residuals[0]  # O(eps): halves (not flat, not growing)


def test_change_vs_control_is_exact_minus_control():
    model, theta, inputs, loss, task = problem()
    v = task.update(model, theta)
    generator = torch.Generator().manual_seed(11)
    warm = [torch.randn(theta.numel(), generator=generator, dtype=torch.float64)] * 3
    adam = make_rule("adam", 1e-2)
    report = rule_report(
        model, v, inputs, loss, 1e-3, adam, state=warmed_state(adam, theta, warm), teacher=task
    )
    with torch.no_grad():
        base = float(task.loss(model, theta))
        exact = float(task.loss(model, theta + report.step)) - base
    assert report.teacher_loss_change_control != 0.0
    assert report.teacher_loss_change_exact == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert report.teacher_loss_change_vs_control == pytest.approx(
        report.teacher_loss_change_exact - report.teacher_loss_change_control, rel=1e-12
    )
