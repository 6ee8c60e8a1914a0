"""The engine against the brute-force oracle, orders as log-log slopes, and the theorem as a property."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

from sublim_theory import reference
from sublim_theory.alignment import (
    TeacherTask,
    alignment_report,
    distillation_targets,
    dot,
    first_order_coefficient,
    first_order_kernel,
    gauss_newton_kernel,
    gauss_newton_product,
    second_order_coefficient,
    second_order_kernel,
    student_update,
    taylor_coefficients,
)
from sublim_theory.architectures import build_model, make_inputs
from sublim_theory.errors import InputError
from sublim_theory.functional import FunctionalModel
from sublim_theory.losses import KLDivergence, SoftCrossEntropy, SquaredError
from sublim_theory.strategies import alignment_cases
from sublim_theory.testing import (
    assert_alignment_bound,
    assert_allclose,
    loglog_slope,
    relative_error,
)

LOSSES = {
    "squared": SquaredError(scale=0.5),
    "softmax_ce": SoftCrossEntropy(),
    "kl": KLDivergence(temperature=2.0),
    "aux": SoftCrossEntropy(outputs=[3, 4]),
}
SMOOTH = {"mlp": "tanh", "cnn": "tanh", "resmlp": "gelu", "transformer": None}


def _problem(arch, n_outputs=5, width=4, depth=2, n=6, seed=0, activation=None):
    model = FunctionalModel(
        build_model(
            arch,
            n_outputs,
            width=width,
            depth=depth,
            seed=seed,
            activation=activation,
            in_features=3,
            image_size=5,
            vocab_size=7,
            seq_len=4,
        )
    )
    inputs = make_inputs(
        arch, n, seed=seed + 1, in_features=3, image_size=5, vocab_size=7, seq_len=4
    )
    v = torch.randn(
        model.num_params, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64
    )
    return model, model.flat_params(), inputs, v / torch.linalg.vector_norm(v)


def _exact_inner(model, theta0, inputs, loss, v, eps, student=None):
    targets = distillation_targets(model, theta0 + eps * v, inputs)
    update = student_update(model, theta0 if student is None else student, inputs, targets, loss)
    return update


@pytest.mark.parametrize("arch", sorted(SMOOTH))
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_engine_matches_explicit_jacobian_oracle(arch, loss_name):
    loss = LOSSES[loss_name]
    model, theta0, inputs, v = _problem(arch, activation=SMOOTH[arch])
    gauss_newton = reference.explicit_gauss_newton(model, theta0, inputs, loss)
    assert_allclose(gauss_newton_product(model, theta0, inputs, loss, v), gauss_newton @ v, "K v")
    a = first_order_coefficient(model, theta0, inputs, loss, v)
    assert relative_error(a, v @ gauss_newton @ v) < 1e-10
    a_ref, b_ref = reference.alignment_derivatives(model, theta0, inputs, loss, v)
    assert relative_error(a, a_ref) < 1e-10
    b = second_order_coefficient(model, theta0, inputs, loss, v)
    assert abs(b - b_ref) <= 1e-10 * max(abs(b_ref), abs(a_ref)), (b, b_ref)


@pytest.mark.parametrize("arch", ["resmlp", "transformer"])
def test_second_order_coefficient_matches_finite_differences(arch):
    """B = phi''(0)/2 by a central difference of the exact alignment: independent of any AD mode."""
    loss = LOSSES["softmax_ce"]
    model, theta0, inputs, v = _problem(arch, activation=SMOOTH[arch])
    phi = reference.exact_alignment_function(model, theta0, inputs, loss, v)
    h = torch.tensor(1e-3, dtype=torch.float64)
    difference = (phi(h) - 2 * phi(0 * h) + phi(-h)) / h**2 / 2
    b = second_order_coefficient(model, theta0, inputs, loss, v)
    a = first_order_coefficient(model, theta0, inputs, loss, v)
    assert abs(b - float(difference)) < 1e-6 * max(abs(b), a), (b, float(difference))


def test_sequence_outputs_average_over_positions():
    model = FunctionalModel(
        build_model("transformer", 7, width=4, depth=1, vocab_size=7, seq_len=4)
    )
    model.module.pool = "none"  # (N, T, k) outputs: a language model
    inputs = make_inputs("transformer", 3, vocab_size=7, seq_len=4)
    v = torch.randn(
        model.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    theta0, loss = model.flat_params(), SoftCrossEntropy()
    gauss_newton = reference.explicit_gauss_newton(model, theta0, inputs, loss)
    assert_allclose(
        gauss_newton_product(model, theta0, inputs, loss, v), gauss_newton @ v, "K v (sequence)"
    )


@pytest.mark.parametrize("arch", sorted(SMOOTH))
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_taylor_orders_are_loglog_slopes(arch, loss_name):
    loss = LOSSES[loss_name]
    model, theta0, inputs, v = _problem(arch, activation=SMOOTH[arch], seed=3)
    a = first_order_coefficient(model, theta0, inputs, loss, v)
    b = second_order_coefficient(model, theta0, inputs, loss, v)
    epsilons = [0.02 / 2**i for i in range(5)]
    first, second = [], []
    for eps in epsilons:
        inner = dot(_exact_inner(model, theta0, inputs, loss, v, eps), v)
        first.append(inner - eps * a)
        second.append(inner - eps * a - eps**2 * b)
    assert abs(loglog_slope(epsilons, first) - 2) < 0.2, first
    assert abs(loglog_slope(epsilons, second) - 3) < 0.3, second


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_vector_first_order_residual_has_slope_two(arch):
    """||dtheta_S - eps K v|| = O(eps^2): the whole update, not only its projection on v."""
    loss = LOSSES["kl"]
    model, theta0, inputs, v = _problem(arch, activation=SMOOTH[arch], seed=4)
    kv = gauss_newton_product(model, theta0, inputs, loss, v)
    epsilons = [0.02 / 2**i for i in range(5)]
    residuals = [
        float(torch.linalg.vector_norm(_exact_inner(model, theta0, inputs, loss, v, e) - e * kv))
        for e in epsilons
    ]
    assert abs(loglog_slope(epsilons, residuals) - 2) < 0.2, residuals


def test_init_distance_law_is_first_order_in_eps_and_delta():
    """dtheta_S = K(eps v - Delta) + O((eps + delta)^2) for a student at theta_0 + Delta."""
    loss = LOSSES["softmax_ce"]
    model, theta0, inputs, v = _problem("mlp", activation="tanh", seed=5)
    d = torch.randn(theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    scales = [0.02 / 2**i for i in range(5)]
    residuals = []
    for s in scales:
        eps, delta = s, 0.7 * s
        exact = _exact_inner(model, theta0, inputs, loss, v, eps, student=theta0 + delta * d)
        predicted = gauss_newton_product(model, theta0, inputs, loss, eps * v - delta * d)
        residuals.append(float(torch.linalg.vector_norm(exact - predicted)))
    assert abs(loglog_slope(scales, residuals) - 2) < 0.2, residuals


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(case=alignment_cases())
def test_student_moves_toward_teacher_at_shared_init(case):
    """The theorem as a property: exact <dtheta_S, v> > 0 for eps <= min(1e-3, eps*/2)."""
    try:
        assert_alignment_bound(case.model, case.direction, case.inputs, case.loss, case.theta0)
    except AssertionError as error:
        raise AssertionError(f"{case.description}: {error}") from error


@settings(deadline=None, max_examples=25)
@given(case=alignment_cases())
def test_first_order_agrees_with_exact_at_small_eps(case):
    report = alignment_report(case.model, case.direction, case.inputs, case.loss, 1e-6)
    assert math.isfinite(report.inner_exact) and math.isfinite(report.B)
    if report.A > 1e-8 * report.norm_teacher**2:
        assert report.A >= 0
        assert abs(report.inner_exact - report.inner_first_order) <= 1e-3 * abs(
            report.inner_first_order
        )


def test_one_auxiliary_logit_under_softmax_gives_exactly_zero_update():
    model, theta0, inputs, v = _problem("mlp", seed=1)
    for loss in (SoftCrossEntropy(outputs=[4]), KLDivergence(3.0, outputs=[0])):
        update = _exact_inner(model, theta0, inputs, loss, v, 0.1)
        assert torch.count_nonzero(update) == 0
        assert first_order_coefficient(model, theta0, inputs, loss, v) == 0.0
        assert torch.count_nonzero(gauss_newton_product(model, theta0, inputs, loss, v)) == 0


def test_teacher_loss_falls_by_alpha_eps_a():
    model, theta0, inputs, _ = _problem("resmlp", seed=2)
    teacher_inputs = make_inputs("resmlp", 8, in_features=3, seed=11)
    labels = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(0))
    teacher = TeacherTask(F.cross_entropy, teacher_inputs, labels)
    v = teacher.update(model, theta0)
    for eps in (1e-3, 5e-4):
        report = alignment_report(
            model, v, inputs, LOSSES["aux"], eps, teacher=teacher, student_lr=0.5
        )
        assert report.teacher_loss_change_exact < 0
        assert relative_error(report.teacher_loss_change_first_order, -0.5 * eps * report.A) < 1e-10
        assert relative_error(report.teacher_loss_change_exact, -0.5 * eps * report.A) < 5e-2


def test_chunked_equals_unchunked():
    model, theta0, inputs, v = _problem("cnn", n=7, seed=6)
    loss = LOSSES["kl"]
    whole = alignment_report(model, v, inputs, loss, 1e-3).to_dict()
    chunked = alignment_report(model, v, inputs, loss, 1e-3, batch_size=3).to_dict()
    for key, value in whole.items():
        if isinstance(value, float):
            assert relative_error(chunked[key], value) < 1e-9 or abs(value) < 1e-300, key


def test_float32_report_has_a_noise_floor_and_agrees_with_float64():
    model64, theta0, inputs, v = _problem("mlp", seed=7, width=8)
    module32 = build_model("mlp", 5, width=8, depth=2, seed=7, in_features=3, dtype=torch.float32)
    model32 = FunctionalModel(module32)
    r64 = alignment_report(model64, v, inputs, LOSSES["softmax_ce"], 1e-2)
    r32 = alignment_report(
        model32, v.float(), inputs.float(), LOSSES["softmax_ce"], 1e-2, noise_floor=True
    )
    assert r64.cosine_noise_floor is None
    assert 0 < r32.cosine_noise_floor < 1e-2
    assert abs(r32.cos_exact_teacher - r64.cos_exact_teacher) < 10 * r32.cosine_noise_floor + 1e-6


def test_report_keys_are_json_ready():
    model, theta0, inputs, v = _problem("mlp")
    report = alignment_report(model, v, inputs, LOSSES["squared"], 1e-3).to_dict()
    assert report["init_distance_abs"] == 0.0
    assert report["eps_star"] is None or report["eps_star"] > 0
    assert all(value is None or isinstance(value, (int, float, str)) for value in report.values())


def test_different_student_init_reports_distance():
    model, theta0, inputs, v = _problem("mlp", seed=8)
    student = theta0 + 0.01
    report = alignment_report(model, v, inputs, LOSSES["squared"], 1e-3, student_init=student)
    assert relative_error(report.init_distance_abs, 0.01 * math.sqrt(theta0.numel())) < 1e-12
    assert report.cos_exact_first_order > 0.99


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, t, x, v: alignment_report(m, v, x, SoftCrossEntropy(), 0.0), "eps must be"),
        (lambda m, t, x, v: alignment_report(m, v, x, SoftCrossEntropy(), -1e-3), "eps must be"),
        (lambda m, t, x, v: alignment_report(m, v, x, SoftCrossEntropy(), math.nan), "eps must be"),
        (
            lambda m, t, x, v: alignment_report(m, v[:-1], x, SoftCrossEntropy(), 1e-3),
            "direction has shape",
        ),
        (lambda m, t, x, v: alignment_report(m, v * math.nan, x, SoftCrossEntropy(), 1e-3), "NaN"),
        (
            lambda m, t, x, v: alignment_report(m, v, x * math.nan, SoftCrossEntropy(), 1e-3),
            "inputs contains NaN",
        ),
        (
            lambda m, t, x, v: alignment_report(m, v, x[:, :2], SoftCrossEntropy(), 1e-3),
            "forward failed",
        ),
        (lambda m, t, x, v: alignment_report(m, v, x[:0], SoftCrossEntropy(), 1e-3), "non-empty"),
        (
            lambda m, t, x, v: alignment_report(m, v, x, SoftCrossEntropy(), 1e-3, batch_size=0),
            "batch_size",
        ),
        (
            lambda m, t, x, v: alignment_report(m, v, x, SoftCrossEntropy(outputs=[9]), 1e-3),
            "outside",
        ),
        (
            lambda m, t, x, v: alignment_report(
                m, v, x, SoftCrossEntropy(), 1e-3, student_init=t[:3]
            ),
            "student_init",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    model, theta0, inputs, v = _problem("mlp")
    with pytest.raises(InputError, match=message):
        call(model, theta0, inputs, v)


@pytest.mark.gpu
def test_report_on_cuda_matches_cpu():
    model, theta0, inputs, v = _problem("transformer", seed=1)
    cpu = alignment_report(model, v, inputs, LOSSES["kl"], 1e-4)
    model.module.cuda()
    gpu_model = FunctionalModel(model.module)
    gpu = alignment_report(gpu_model, v.cuda(), inputs.cuda(), LOSSES["kl"], 1e-4)
    assert relative_error(gpu.inner_exact, cpu.inner_exact) < 1e-8
    assert relative_error(gpu.A, cpu.A) < 1e-10


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_kernels_compose_with_vmap_over_seeds(arch):
    """Seeds batched with torch.func.vmap give the same numbers as a loop over seeds."""
    loss = LOSSES["kl"]
    problems = [_problem(arch, activation=SMOOTH[arch], seed=s) for s in range(3)]
    model, _, inputs, _ = problems[0]
    thetas = torch.stack([p[1] for p in problems])
    directions = torch.stack([p[3] for p in problems])

    def measure(theta, v):
        return (
            gauss_newton_kernel(model, theta, inputs, loss, v),
            first_order_kernel(model, theta, inputs, loss, v),
            second_order_kernel(model, theta, inputs, loss, v),
        )

    batched = torch.func.vmap(measure)(thetas, directions)
    for i in range(3):
        looped = measure(thetas[i], directions[i])
        for name, b, lo in zip(("K v", "A", "B"), batched, looped):
            assert_allclose(b[i], lo, f"{name} seed {i}", rtol=1e-9)


def test_explicit_gauss_newton_product_matches_dense_matrix():
    model, theta0, inputs, v = _problem("cnn", seed=2)
    loss = LOSSES["aux"]
    dense = reference.explicit_gauss_newton(model, theta0, inputs, loss) @ v
    assert_allclose(
        reference.explicit_gauss_newton_product(model, theta0, inputs, loss, v, 7),
        dense,
        "J^T M J v",
    )


def test_taylor_coefficients_agree_with_the_separate_kernels():
    model, theta0, inputs, v = _problem("resmlp", seed=4)
    loss = LOSSES["kl"]
    a, b = taylor_coefficients(model, theta0, inputs, loss, v, batch_size=4)
    assert relative_error(a, first_order_coefficient(model, theta0, inputs, loss, v)) < 1e-12
    assert relative_error(b, second_order_coefficient(model, theta0, inputs, loss, v)) < 1e-12
