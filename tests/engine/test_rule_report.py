"""The rule report against oracles: explicit Jacobians (torch.autograd.functional.jacobian),
torch.optim.Adam on the same gradient, log-log slopes for the O(eps^2) claims, exact sign
agreement for the sign steps, and a hand-written LoRA network for adapter space (float64)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sublim_theory.engine.alignment import TeacherTask, distillation_targets, student_update
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.report import AlignmentReport, alignment_report
from sublim_theory.engine.rule_report import rule_report, student_gradients, teacher_direction
from sublim_theory.engine.update_rules import make_rule, warmed_state
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import build_model, make_inputs
from sublim_theory.testing.asserts import ROUNDING_STEPS, loglog_slope, update_rounding_scales
from sublim_theory.testing.reference import explicit_output_hessian

UNIT = torch.finfo(torch.float64).eps / 2
EPSILONS = [1e-3 * 2.0**-j for j in range(5)]


def make_problem(loss_name="softmax_ce", seed=0):
    model = FunctionalModel(build_model("mlp", 3, in_features=4, width=5, depth=1, seed=seed))
    theta = model.flat_params()
    inputs = make_inputs("mlp", 6, in_features=4, seed=seed)
    generator = torch.Generator().manual_seed(50 + seed)
    x_teacher = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (8,), generator=generator)
    task = TeacherTask(F.cross_entropy, x_teacher, labels)
    return model, theta, inputs, make_loss(loss_name), task


def explicit_jacobian(function, theta):
    """(positions, k, P) by torch.autograd.functional.jacobian: no jvp/vjp algebra of ours."""
    jac = torch.autograd.functional.jacobian(function, theta)
    return jac.reshape(-1, jac.shape[-2], theta.numel())


def explicit_update(model, theta, inputs, targets, loss):
    """-E_x[J^T grad_z l(z, y)] from the explicit Jacobian."""
    jac = explicit_jacobian(model.as_function(inputs), theta)
    z = model(theta, inputs).detach().requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss.value(z, targets).sum(), z)
    return -torch.einsum("nkp,nk->p", jac, grad_z.reshape(jac.shape[0], -1)) / jac.shape[0]


# --------------------------------------------------------------------------------------------
# exact steps
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_name", ["squared", "softmax_ce"])
def test_sgd_step_is_lr_times_the_explicit_update(loss_name):
    model, theta, inputs, loss, task = make_problem(loss_name)
    v, eps, lr = task.update(model, theta), 1e-2, 0.3
    report = rule_report(model, v, inputs, loss, eps, make_rule("sgd", lr))
    targets = distillation_targets(model, theta + eps * v, inputs)
    expected = lr * explicit_update(model, theta, inputs, targets, loss)
    scale_update, scale_gn = update_rounding_scales(model, theta, inputs, loss)
    error = float((report.step - expected).norm())
    assert error <= ROUNDING_STEPS * UNIT * lr * scale_update, error
    # K v from J^T M J v with M from autograd's Hessian of the loss
    gradients = student_gradients(model, v, inputs, loss, eps)
    jac = explicit_jacobian(model.as_function(inputs), theta)
    hessians = explicit_output_hessian(loss, model(theta, inputs).detach())
    k_v = torch.einsum("nkp,nkl,nlq,q->p", jac, hessians, jac, v) / jac.shape[0]
    error = float((gradients.k_v - k_v).norm())
    assert error <= ROUNDING_STEPS * UNIT * scale_gn * float(v.norm()), error
    assert report.cos_step_K_v == pytest.approx(
        float(report.step @ k_v / (report.step.norm() * k_v.norm())), abs=1e-12
    )


def torch_adam_step(theta, warm_gradients, gradient, **options):
    """torch.optim.Adam: warm on each gradient with the parameter put back, then one step."""
    parameter = nn.Parameter(theta.clone())
    optimizer = torch.optim.Adam([parameter], **options)
    for warm in warm_gradients:
        parameter.grad = warm.clone()
        optimizer.step()
        with torch.no_grad():
            parameter.copy_(theta)
    parameter.grad = gradient.clone()
    optimizer.step()
    return parameter.detach() - theta


@pytest.mark.parametrize("warm_steps", [0, 3])
def test_adam_step_equals_torch_optim_on_the_same_gradient(warm_steps):
    model, theta, inputs, loss, task = make_problem()
    v, eps, lr = task.update(model, theta), 1e-3, 1e-2
    generator = torch.Generator().manual_seed(7)
    warm = [torch.randn(theta.numel(), generator=generator, dtype=torch.float64)] * warm_steps
    rule = make_rule("adam", lr, beta1=0.8, beta2=0.95)
    report = rule_report(model, v, inputs, loss, eps, rule, state=warmed_state(rule, theta, warm))
    targets = distillation_targets(model, theta + eps * v, inputs)
    gradient = -student_update(model, theta, inputs, targets, loss)
    expected = torch_adam_step(theta, warm, gradient, lr=lr, betas=(0.8, 0.95))
    # ~16 roundings per Adam step on the step's size lr/(1-beta1), plus u |theta| from theta + s - theta
    bound = 16 * (warm_steps + 1) * UNIT * (lr / 0.2) + 2 * UNIT * float(theta.abs().max())
    assert float((report.step - expected).abs().max()) <= bound
    assert int(report.state["step"]) == warm_steps + 1


# --------------------------------------------------------------------------------------------
# the first-order prediction
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "signsgd"])
def test_fresh_prediction_is_the_rules_first_order_step(name):
    model, theta, inputs, loss, task = make_problem()
    v, eps = task.update(model, theta), 1e-3
    rule = make_rule(name, 0.1)
    report = rule_report(model, v, inputs, loss, eps, rule)
    gradients = student_gradients(model, v, inputs, loss, eps)
    expected = rule.first_order_step(gradients.k_v, eps, theta)
    # both apply the rule's map to eps K v: a few roundings of the step's size (<= lr)
    assert float((report.prediction - expected).abs().max()) <= 16 * UNIT * 0.1


def smooth_rules(theta):
    generator = torch.Generator().manual_seed(3)
    diagonal = torch.rand(theta.numel(), generator=generator, dtype=torch.float64) + 0.5
    adam = make_rule("adam", 1e-2)
    warm = [torch.randn(theta.numel(), generator=generator, dtype=torch.float64)] * 3
    return [
        (make_rule("sgd", 0.1), None),
        (make_rule("momentum", 0.1, momentum=0.9, nesterov=True), None),
        (make_rule("preconditioned", 0.1, preconditioner=diagonal), None),
        (adam, warmed_state(adam, theta, warm)),  # second moment O(1): smooth in g
    ]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("loss_name", ["squared", "softmax_ce"])
def test_prediction_residual_is_second_order(index, loss_name):
    model, theta, inputs, loss, task = make_problem(loss_name)
    rule, state = smooth_rules(theta)[index]
    v = task.update(model, theta)
    residuals, sizes = [], []
    for eps in EPSILONS:
        report = rule_report(model, v, inputs, loss, eps, rule, state=state)
        residuals.append(float((report.step - report.prediction).norm()))
        sizes.append(float(report.step.norm()))
    # far above rounding of the step, and shrinking 4x per halving of eps
    assert min(residuals) > 1e3 * UNIT * max(sizes)
    assert 1.8 < loglog_slope(EPSILONS, residuals) < 2.2, residuals


@pytest.mark.parametrize("loss_name", ["squared", "softmax_ce"])
@pytest.mark.parametrize("name,options", [("signsgd", {}), ("adam", {"eps": 1e-14})])
def test_sign_steps_agree_in_sign_at_small_eps(loss_name, name, options):
    model, theta, inputs, loss, task = make_problem(loss_name)
    v = task.update(model, theta)
    for eps in (1e-5, 1e-4):
        report = rule_report(model, v, inputs, loss, eps, make_rule(name, 0.1, **options))
        assert report.sign_agreement == 1.0
        k_v = student_gradients(model, v, inputs, loss, eps).k_v
        assert torch.equal(torch.sign(report.step), torch.sign(k_v))
        # <sign(K v), K v> = ||K v||_1: the cosine with K v is ||K v||_1 / (sqrt(P) ||K v||)
        if name == "signsgd":
            expected = float(k_v.abs().sum() / (math.sqrt(k_v.numel()) * k_v.norm()))
            assert report.cos_step_K_v == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["sgd", "momentum"])
def test_trait_loss_change_first_order_has_slope_two(name):
    model, theta, inputs, loss, task = make_problem("softmax_ce")
    v = task.update(model, theta)
    rule = make_rule(name, 0.5)
    differences = []
    for eps in EPSILONS:
        report = rule_report(model, v, inputs, loss, eps, rule, teacher=task)
        assert report.teacher_loss_change_exact < 0  # Theorem 1 at these eps
        differences.append(
            report.teacher_loss_change_exact - report.teacher_loss_change_first_order
        )
    assert 1.8 < loglog_slope(EPSILONS, differences) < 2.2, differences


# --------------------------------------------------------------------------------------------
# the teacher's direction
# --------------------------------------------------------------------------------------------
def test_teacher_direction_gradient_and_ten_adam_steps():
    model, theta, _, _, task = make_problem()
    assert torch.equal(teacher_direction(model, theta, task), -task.gradient(model, theta))
    parameter = nn.Parameter(theta.clone())
    optimizer = torch.optim.Adam([parameter], lr=1e-2)
    for _ in range(10):
        optimizer.zero_grad()
        (parameter.grad,) = torch.autograd.grad(task.loss(model, parameter), parameter)
        optimizer.step()
    v = teacher_direction(model, theta, task, "adam", steps=10, lr=1e-2)
    # 10 steps of ~16 roundings of lr / (1 - beta1), plus |theta| for the subtraction
    bound = 10 * 16 * UNIT * 0.1 + 2 * UNIT * float(theta.abs().max())
    assert float((v - (parameter.detach() - theta)).abs().max()) <= bound
    one = teacher_direction(model, theta, task, make_rule("sgd", 1.0), steps=1)
    assert float((one + task.gradient(model, theta)).abs().max()) <= 4 * UNIT * float(
        one.abs().max()
    )


# --------------------------------------------------------------------------------------------
# LoRA: adapter space against a hand-written adapted network
# --------------------------------------------------------------------------------------------
RANK, ALPHA = 2, 4.0


def lora_problem():
    base = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    torch.manual_seed(0)
    for parameter in base.parameters():
        nn.init.normal_(parameter)
    model = FunctionalModel(add_lora(base, RANK, alpha=ALPHA, seed=1))
    return base, model


def hand_lora(base, model, phi, x):
    """W_l = W0_l + (alpha / r) B_l A_l written out, per Linear layer of the base."""
    adapters = model.unflatten(phi)
    scale = ALPHA / RANK
    h = x
    for index in (0, 2):
        layer = base[index]
        a = adapters[f"{index}.lora_A.default.weight"]
        b = adapters[f"{index}.lora_B.default.weight"]
        h = h @ (layer.weight + scale * b @ a).T + layer.bias
        if index == 0:
            h = torch.tanh(h)
    return h


def test_lora_gauss_newton_is_explicit_adapter_jacobian_product():
    base, model = lora_problem()
    phi0 = model.flat_params()
    x = make_inputs("mlp", 6, in_features=4, seed=2)
    loss = make_loss("softmax_ce")
    generator = torch.Generator().manual_seed(4)
    # the adapted network is the hand-written one, also away from B = 0
    phi = phi0 + torch.randn(phi0.numel(), generator=generator, dtype=torch.float64)
    assert torch.allclose(model(phi, x), hand_lora(base, model, phi, x), rtol=0, atol=1e-13)
    v = torch.randn(phi0.numel(), generator=generator, dtype=torch.float64)
    jac = explicit_jacobian(lambda p: hand_lora(base, model, p, x), phi0)
    hessians = explicit_output_hessian(loss, model(phi0, x).detach())
    expected = torch.einsum("nkp,nkl,nlq,q->p", jac, hessians, jac, v) / jac.shape[0]
    k_v = student_gradients(model, v, x, loss, 1e-3).k_v
    scale = float(jac.norm() ** 2 / jac.shape[0] * v.norm()) * 2  # trace(M) <= 2 for softmax
    assert float((k_v - expected).norm()) <= ROUNDING_STEPS * UNIT * scale


def test_lora_a_block_of_the_student_step_is_exactly_zero_at_b_zero():
    _, model = lora_problem()
    phi0 = model.flat_params()
    x = make_inputs("mlp", 6, in_features=4, seed=2)
    generator = torch.Generator().manual_seed(5)
    task = TeacherTask(
        F.cross_entropy,
        torch.randn(8, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (8,), generator=generator),
    )
    v = teacher_direction(model, phi0, task)
    report = rule_report(model, v, x, make_loss("softmax_ce"), 1e-3, make_rule("sgd", 0.1))
    blocks = model.unflatten(torch.arange(phi0.numel()))
    a_index = torch.cat([i.reshape(-1) for n, i in blocks.items() if "lora_A" in n])
    b_index = torch.cat([i.reshape(-1) for n, i in blocks.items() if "lora_B" in n])
    assert bool((report.prediction[a_index] == 0).all())
    assert bool((report.step[a_index] == 0).all())
    assert bool((v[a_index] == 0).all())  # the teacher's gradient step moves B only
    assert float(report.prediction[b_index].abs().max()) > 0
    assert report.cos_step_prediction > 0.99


# --------------------------------------------------------------------------------------------
# the hook in alignment_report, other students, bad input
# --------------------------------------------------------------------------------------------
def test_alignment_report_rule_keyword():
    model, theta, inputs, loss, task = make_problem()
    v, eps = task.update(model, theta), 1e-3
    plain = alignment_report(model, v, inputs, loss, eps, teacher=task)
    assert plain.rule is None
    assert set(plain.to_dict()) == {f for f in AlignmentReport.__dataclass_fields__ if f != "rule"}
    rule = make_rule("adam", 1e-2)
    with_rule = alignment_report(model, v, inputs, loss, eps, teacher=task, rule=rule)
    alone = rule_report(model, v, inputs, loss, eps, rule, teacher=task).to_dict()
    keys = with_rule.to_dict()
    assert {k for k in keys if not k.startswith("rule_")} == set(plain.to_dict())
    for key, value in plain.to_dict().items():
        assert keys[key] == value or (value != value and keys[key] != keys[key]), key
    for key, value in alone.items():
        if isinstance(value, float):
            # K v = K(eps v) / eps in the hook: equal up to a few roundings of O(1) cosines
            assert keys[f"rule_{key}"] == pytest.approx(value, rel=1e-9, abs=1e-14), key
        else:
            assert keys[f"rule_{key}"] == value


def test_independent_base_student_has_no_prediction():
    model, theta, inputs, loss, task = make_problem()
    other = FunctionalModel(build_model("mlp", 3, in_features=4, width=5, depth=1, seed=9))
    report = rule_report(
        model,
        task.update(model, theta),
        inputs,
        loss,
        1e-3,
        make_rule("sgd", 0.1),
        student_model=other,
        student_init=other.flat_params(),
        teacher=task,
    )
    assert math.isnan(report.cos_step_prediction) and math.isnan(report.prediction_residual)
    assert math.isfinite(report.cos_step_teacher) and math.isfinite(
        report.teacher_loss_change_exact
    )


def test_bad_input_is_an_input_error():
    model, theta, inputs, loss, task = make_problem()
    v = task.update(model, theta)
    with pytest.raises(InputError, match="UpdateRule"):
        rule_report(model, v, inputs, loss, 1e-3, "sgd")
    with pytest.raises(InputError, match="steps >= 1"):
        teacher_direction(model, theta, task, "adam", steps=0)
    with pytest.raises(InputError, match="eps must be"):
        rule_report(model, v, inputs, loss, 0.0, make_rule("sgd", 0.1))
    wrong = make_rule("adam", 0.1).init(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(InputError, match="state does not fit"):
        rule_report(model, v, inputs, loss, 1e-3, make_rule("adam", 0.1), state=wrong)
    small = FunctionalModel(build_model("mlp", 3, in_features=4, width=2, depth=1))
    with pytest.raises(InputError, match="same layout"):
        rule_report(model, v, inputs, loss, 1e-3, make_rule("sgd", 0.1), student_model=small)


def test_control_step_is_zero_fresh_and_the_warm_part_warmed():
    """Control s0 = rule(g0) with g0 = 0 at the shared init: fresh rules move 0 (so the change
    vs control is the exact change); warmed heavy ball: s - s0 = -lr g, the sgd step."""
    model, theta, inputs, loss, task = make_problem()
    v, eps = task.update(model, theta), 1e-3
    for name in ("sgd", "adam", "signsgd"):
        report = rule_report(model, v, inputs, loss, eps, make_rule(name, 0.1), teacher=task)
        assert report.teacher_loss_change_control == 0.0
        assert report.teacher_loss_change_vs_control == report.teacher_loss_change_exact
    generator = torch.Generator().manual_seed(11)
    warm = [torch.randn(theta.numel(), generator=generator, dtype=torch.float64)] * 2
    momentum = make_rule("momentum", 0.1, momentum=0.9)
    warmed = rule_report(
        model,
        v,
        inputs,
        loss,
        eps,
        momentum,
        state=warmed_state(momentum, theta, warm),
        teacher=task,
    )
    sgd = rule_report(model, v, inputs, loss, eps, make_rule("sgd", 0.1), teacher=task)
    assert warmed.teacher_loss_change_control != 0.0
    assert warmed.cos_signal_K_v == pytest.approx(sgd.cos_step_K_v, rel=1e-9)
    assert warmed.cos_signal_teacher == pytest.approx(sgd.cos_step_teacher, rel=1e-9)
