"""Update rules: each equals torch.optim over several float64 steps; first-order predictions match
exact one-step student updates on a tiny float64 network (slope 2 where the claim is O(eps^2),
exact sign agreement for the sign step); bad input is an InputError; rules compose with vmap."""

import math

import numpy as np
import pytest
import torch

from sublim_theory.engine.alignment import (
    distillation_targets,
    gauss_newton_product,
    student_update,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.update_rules import RULES, make_rule
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import build_model, make_inputs
from sublim_theory.testing.asserts import loglog_slope

UNIT = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64
SIZE, STEPS = 7, 5
# Each rule spends at most ~10 flops per coordinate per step (Adam: moments, bias corrections,
# sqrt, division), each within one unit roundoff of its result: 16 per step bounds the error of
# a step relative to the magnitudes it is computed from, and steps add up linearly.
FLOPS_PER_STEP = 16


def random_run(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(SIZE, generator=generator, dtype=torch.float64)
    gradients = [torch.randn(SIZE, generator=generator, dtype=torch.float64) for _ in range(STEPS)]
    # one exact zero and one tiny entry: the sign and Adam's eps see them
    gradients[0][0] = 0.0
    gradients[1][1] = 1e-12
    return start, gradients


def run_torch(optimizer_class, start, gradients, **options):
    parameter = torch.nn.Parameter(start.clone())
    optimizer = optimizer_class([parameter], **options)
    trajectory = []
    for gradient in gradients:
        parameter.grad = gradient.clone()
        optimizer.step()
        trajectory.append(parameter.detach().clone())
    return trajectory


def run_rule(rule, start, gradients):
    parameters, state = start.clone(), rule.init(start)
    trajectory = []
    for gradient in gradients:
        step, state = rule(gradient, parameters, state)
        parameters = parameters + step
        trajectory.append(parameters)
    return trajectory


def assert_trajectories_agree(ours, reference, lr):
    """Error model: FLOPS_PER_STEP unit roundoffs of (|theta| + the step's size) per step."""
    # the largest step any rule here takes is lr * (1 + mu) * (|g| + lambda |theta|) or lr / (1 -
    # beta1) for Adam; 10 lr bounds both for the gradients and decays drawn here
    for index, (a, b) in enumerate(zip(ours, reference), start=1):
        scale = b.abs().max() + 10 * lr
        tolerance = FLOPS_PER_STEP * index * UNIT * float(scale)
        error = float((a - b).abs().max())
        assert error <= tolerance, f"step {index}: max error {error:.3g} > {tolerance:.3g}"


TORCH_CASES = [
    ("sgd", torch.optim.SGD, {}),
    ("sgd", torch.optim.SGD, {"weight_decay": 0.1}),
    ("momentum", torch.optim.SGD, {"momentum": 0.9}),
    ("momentum", torch.optim.SGD, {"momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05}),
    ("momentum", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adam", torch.optim.Adam, {}),
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-3, "weight_decay": 0.1}),
    ("adamw", torch.optim.AdamW, {}),
    ("adamw", torch.optim.AdamW, {"betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.3}),
]


def rule_options(options: dict) -> dict:
    converted = dict(options)
    if "betas" in converted:
        converted["beta1"], converted["beta2"] = converted.pop("betas")
    return converted


@pytest.mark.parametrize("name,optimizer_class,options", TORCH_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_rule_equals_torch_optim(name, optimizer_class, options, seed):
    lr = 0.05
    start, gradients = random_run(seed)
    reference = run_torch(optimizer_class, start, gradients, lr=lr, **options)
    ours = run_rule(make_rule(name, lr, **rule_options(options)), start, gradients)
    assert_trajectories_agree(ours, reference, lr)


def test_signsgd_and_preconditioned_by_hand():
    lr = 0.05
    start, gradients = random_run(2)
    diagonal = torch.linspace(0.5, 2.0, SIZE, dtype=torch.float64)
    matrix = torch.randn(
        SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    by_hand = {"signsgd": [], "diagonal": [], "matrix": []}
    current = {key: start.clone() for key in by_hand}
    for gradient in gradients:
        current["signsgd"] = current["signsgd"] - lr * torch.sign(gradient)
        current["diagonal"] = current["diagonal"] - lr * diagonal * gradient
        current["matrix"] = current["matrix"] - lr * matrix @ gradient
        for key in by_hand:
            by_hand[key].append(current[key])
    assert run_rule(make_rule("signsgd", lr), start, gradients)[0][0] == start[0]  # sign(0) = 0
    assert_trajectories_agree(
        run_rule(make_rule("signsgd", lr), start, gradients), by_hand["signsgd"], lr
    )
    rule = make_rule("preconditioned", lr, preconditioner=diagonal)
    assert_trajectories_agree(run_rule(rule, start, gradients), by_hand["diagonal"], lr)
    # a matrix P: each step's error also grows with ||P|| ||g|| (a dot product of SIZE terms)
    rule = make_rule("preconditioned", lr, preconditioner=matrix)
    ours = run_rule(rule, start, gradients)
    for index, (a, b) in enumerate(zip(ours, by_hand["matrix"]), start=1):
        scale = float(b.abs().max()) + lr * SIZE * float(matrix.abs().max()) * 3
        assert float((a - b).abs().max()) <= FLOPS_PER_STEP * index * UNIT * scale


def test_given_state_continues_a_run():
    """Splitting a run and passing the state back in gives the same trajectory."""
    start, gradients = random_run(4)
    rule = make_rule("adam", 0.05, eps=1e-6)
    whole = run_rule(rule, start, gradients)
    parameters, state = start.clone(), rule.init(start)
    for gradient in gradients[:2]:
        step, state = rule(gradient, parameters, state)
        parameters = parameters + step
    for gradient in gradients[2:]:
        step, state = rule(gradient, parameters, state)
        parameters = parameters + step
    assert torch.equal(parameters, whole[-1])
    assert float(state["step"]) == STEPS


def test_rules_compose_with_vmap():
    """vmap over stacked gradients, parameters and states (states after 0 and 1 steps)."""
    start, gradients = random_run(5)
    stacked = torch.stack(gradients[:2])
    thetas = torch.stack([start, start + 1.0])
    for name in ("sgd", "momentum", "adam", "adamw", "signsgd"):
        rule = make_rule(name, 0.1)
        fresh = rule.init(start)
        stepped = rule(gradients[4], start, fresh)[1]
        states = [fresh, stepped]
        batched_states = {key: torch.stack([s[key] for s in states]) for key in fresh}
        batched, _ = torch.func.vmap(rule)(stacked, thetas, batched_states)
        looped = torch.stack([rule(g, t, s)[0] for g, t, s in zip(stacked, thetas, states)])
        assert torch.equal(batched, looped), name


# --------------------------------------------------------------------------------------------
# first-order predictions against exact one-step student updates (tiny float64 network)
# --------------------------------------------------------------------------------------------
class Problem:
    """Shared init theta_0, a direction v, noise inputs, and exact student gradients."""

    def __init__(self, loss_name: str, seed: int = 0) -> None:
        self.model = FunctionalModel(
            build_model("mlp", 3, in_features=4, width=5, depth=1, seed=seed)
        )
        self.theta = self.model.flat_params()
        generator = torch.Generator().manual_seed(100 + seed)
        self.v = torch.randn(self.theta.numel(), generator=generator, dtype=torch.float64)
        self.inputs = make_inputs("mlp", 6, in_features=4, seed=seed)
        self.loss = make_loss(loss_name)
        self.kv = gauss_newton_product(self.model, self.theta, self.inputs, self.loss, self.v)

    def gradient(self, eps: float) -> torch.Tensor:
        """The student's exact gradient grad L_S at theta_0 (= -dtheta_S)."""
        targets = distillation_targets(self.model, self.theta + eps * self.v, self.inputs)
        return -student_update(self.model, self.theta, self.inputs, targets, self.loss)

    def exact_step(self, rule, eps: float) -> torch.Tensor:
        return rule(self.gradient(eps), self.theta, rule.init(self.theta))[0]


EPSILONS = [1e-3 * 2.0**-j for j in range(5)]
LINEAR_RULES = [
    ("sgd", {}),
    ("sgd", {"weight_decay": 0.1}),
    ("momentum", {"momentum": 0.9}),
    ("momentum", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    ("adam", {"eps": 1.0}),  # eps |K v| << eps_a: the linear regime
    ("adam", {"eps": 1.0, "weight_decay": 0.1}),  # Adam's map of -eps K v + lambda theta
    ("adamw", {"eps": 1.0, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("loss_name", ["squared", "softmax_ce"])
@pytest.mark.parametrize("name,options", LINEAR_RULES)
def test_first_order_prediction_residual_is_second_order(loss_name, name, options):
    problem = Problem(loss_name)
    rule = make_rule(name, 0.1, **options)
    residuals = [
        float(
            (
                problem.exact_step(rule, eps)
                - rule.first_order_step(problem.kv, eps, problem.theta)
            ).norm()
        )
        for eps in EPSILONS
    ]
    sizes = [
        float(rule.first_order_step(problem.kv, eps, problem.theta).norm()) for eps in EPSILONS
    ]
    # the residual must be far above rounding (~1e-16 relative) and far below the step itself
    assert min(residuals) > 1e3 * UNIT * max(sizes)
    assert 1.8 < loglog_slope(EPSILONS, residuals) < 2.2, residuals


def test_preconditioned_prediction_and_mismatch():
    """alpha eps P K v, O(eps^2); a different P changes the prediction (the test can fail)."""
    problem = Problem("squared")
    generator = torch.Generator().manual_seed(9)
    root = torch.randn(
        problem.theta.numel(), problem.theta.numel(), generator=generator, dtype=torch.float64
    )
    rule = make_rule("preconditioned", 0.1, preconditioner=root.T @ root / problem.theta.numel())
    residuals = [
        float(
            (
                problem.exact_step(rule, eps)
                - rule.first_order_step(problem.kv, eps, problem.theta)
            ).norm()
        )
        for eps in EPSILONS
    ]
    assert 1.8 < loglog_slope(EPSILONS, residuals) < 2.2, residuals


@pytest.mark.parametrize("loss_name", ["squared", "softmax_ce"])
@pytest.mark.parametrize(
    "name,options", [("signsgd", {}), ("adam", {"eps": 1e-14}), ("adamw", {"eps": 1e-14})]
)
def test_sign_step_agrees_exactly_at_small_eps(loss_name, name, options):
    """Adam's fresh first step and SignSGD: sign(step) = sign(K v) in every coordinate."""
    problem = Problem(loss_name)
    rule = make_rule(name, 0.1, **options)
    kv = problem.kv
    # every coordinate of K v is far from 0, so its sign is settled at first order
    assert float(kv.abs().min()) > 1e-6 * float(kv.abs().max())
    for eps in (1e-5, 1e-4):
        exact = problem.exact_step(rule, eps)
        if name == "adamw":
            exact = exact + rule.lr * rule.weight_decay * problem.theta  # remove the decay term
        assert torch.equal(torch.sign(exact), torch.sign(kv)), eps
        predicted = rule.first_order_step(kv, eps, problem.theta)
        if name == "adamw":
            predicted = predicted + rule.lr * rule.weight_decay * problem.theta
        assert torch.equal(torch.sign(predicted), torch.sign(kv))
        # scale-free: |step_i| = alpha |g_i| / (|g_i| + eps_a), whatever eps is; at these eps
        # |g_i| >= eps |k_i| / 2 (the O(eps^2) part is small), which bounds it from below
        eps_adam = getattr(rule, "eps", 0.0)
        lower = rule.lr / (1 + eps_adam / (0.5 * eps * kv.abs()))
        assert bool((exact.abs() <= rule.lr).all() and (exact.abs() >= lower).all()), eps
    # <step, K v> = alpha ||K v||_1 > 0
    step = problem.exact_step(make_rule("signsgd", 0.1), 1e-4)
    assert math.isclose(float(step @ kv), 0.1 * float(kv.abs().sum()), rel_tol=1e-12)


def test_adam_regime_boundary():
    """alpha eps k / (eps |k| + eps_a): half the sign step where eps |k_i| = eps_a."""
    problem = Problem("squared")
    eps = 1e-4
    boundary = float(eps * problem.kv.abs().median())
    rule = make_rule("adam", 0.1, eps=boundary)
    exact = problem.exact_step(rule, eps)
    predicted = rule.first_order_step(problem.kv, eps, problem.theta)
    middle = (eps * problem.kv.abs() - boundary).abs().argmin()
    assert abs(float(exact[middle].abs()) - 0.05) < 1e-3
    # O(eps) relative error of the prediction: the gradient's O(eps^2) part over its O(eps) part
    assert float((exact - predicted).norm() / predicted.norm()) < 1e-2


def test_adamw_decay_is_independent_of_the_teacher():
    problem = Problem("squared")
    rule = make_rule("adamw", 0.1, eps=1e-14, weight_decay=0.2)
    for eps in (1e-5, 1e-4):
        exact = problem.exact_step(rule, eps)
        adam = make_rule("adam", 0.1, eps=1e-14)
        assert torch.allclose(
            exact, problem.exact_step(adam, eps) - 0.02 * problem.theta, rtol=0, atol=1e-15
        )


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_rule("lion", 0.1), "unknown update rule 'lion'"),
        (lambda: make_rule("sgd", 0.0), "learning rate"),
        (lambda: make_rule("sgd", float("nan")), "learning rate"),
        (lambda: make_rule("adam", 0.1, beta1=1.0), "beta1"),
        (lambda: make_rule("adam", 0.1, eps=-1.0), "eps"),
        (lambda: make_rule("momentum", 0.1, momentum=0.0, nesterov=True), "Nesterov"),
        (lambda: make_rule("sgd", 0.1, momentum=0.9), "does not take"),
        (lambda: make_rule("adamw", 0.1, decoupled=False), "decoupled"),
        (lambda: make_rule("preconditioned", 0.1), "preconditioner"),
    ],
)
def test_bad_options_are_input_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_bad_vectors_are_input_errors():
    rule = make_rule("sgd", 0.1)
    theta = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(InputError, match="flat vectors"):
        rule(torch.zeros(2, 2, dtype=torch.float64), theta, {})
    with pytest.raises(InputError, match="entries"):
        rule(torch.zeros(3, dtype=torch.float64), theta, {})
    with pytest.raises(InputError, match="flat vectors"):
        rule.first_order_step(torch.zeros(2, 2, dtype=torch.float64), 1e-3, theta)
    bad = make_rule("preconditioned", 0.1, preconditioner=torch.eye(3, dtype=torch.float64))
    with pytest.raises(InputError, match="shape"):
        bad(torch.zeros(4, dtype=torch.float64), theta, {})
    with pytest.raises(InputError, match="eps > 0"):
        make_rule("signsgd", 0.1).first_order_step(theta, 0.0, theta)


def test_every_rule_is_listed():
    assert sorted(RULES) == ["adam", "adamw", "momentum", "preconditioned", "sgd", "signsgd"]
    assert np.all(
        [
            make_rule(
                n, 0.1, **({"preconditioner": torch.ones(2)} if n == "preconditioned" else {})
            ).name
            == n
            for n in RULES
        ]
    )
