"""Properties of the engine over drawn problems and over every architecture, each against an oracle.

Oracles: ``sublim_theory.testing.reference`` (reverse-mode derivatives of the exact alignment
phi(eps) = <dtheta_S(eps), v>, explicit Jacobians in float64) and log-log slopes of residuals
of the exact one-step update. Tolerances: ``assert_within_rounding`` on the scale of the terms
each quantity is summed from (``taylor_rounding_scales``).
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

from sublim_theory.engine.alignment import (
    TeacherTask,
    distillation_targets,
    dot,
    gauss_newton_product,
    student_update,
    taylor_coefficients,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import SoftCrossEntropy
from sublim_theory.engine.report import alignment_report
from sublim_theory.models.architectures import ARCHITECTURES, build_model, make_inputs
from sublim_theory.testing import reference
from sublim_theory.testing.asserts import (
    assert_within_rounding,
    loglog_slope,
    taylor_rounding_scales,
)
from sublim_theory.testing.strategies import alignment_cases

MODEL_SIZES = {"in_features": 3, "vocab_size": 7, "seq_len": 4}
SIZES = {**MODEL_SIZES, "image_size": 5}
SMOOTH = {"mlp": "tanh", "cnn": "tanh", "resmlp": "gelu", "transformer": None}
# small enough that eps^3 terms are < ~10% of the eps^2 ones on these tiny nets
STEPS = [2e-3 / 2**i for i in range(5)]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=40)
@given(case=alignment_cases())
def test_a_and_b_match_the_exact_alignment_derivatives(case):
    """A = phi'(0) >= 0 and B = phi''(0)/2 on drawn architectures, losses, subsets and inputs."""
    a, b = taylor_coefficients(case.model, case.theta0, case.inputs, case.loss, case.direction)
    a_ref, b_ref = reference.alignment_derivatives(
        case.model, case.theta0, case.inputs, case.loss, case.direction
    )
    scale_a, scale_b = taylor_rounding_scales(
        case.model, case.theta0, case.inputs, case.loss, case.direction
    )
    assert_within_rounding(min(a, 0.0), 0.0, scale_a, f"A >= 0 ({case.description})")
    assert_within_rounding(a, a_ref, scale_a, f"A vs phi'(0) ({case.description})")
    assert_within_rounding(b, b_ref, scale_b, f"B vs phi''(0)/2 ({case.description})")


def _problem(arch, seed, activation=None, n_outputs=5):
    model = FunctionalModel(
        build_model(
            arch, n_outputs, width=4, depth=2, seed=seed, activation=activation, **MODEL_SIZES
        )
    )
    inputs = make_inputs(arch, 6, seed=seed + 1, **SIZES)
    return model, model.flat_params(), inputs


def _teacher(arch, seed, n_outputs=5):
    teacher_inputs = make_inputs(arch, 8, seed=seed + 2, **SIZES)
    labels = torch.randint(0, n_outputs, (8,), generator=torch.Generator().manual_seed(seed))
    return TeacherTask(F.cross_entropy, teacher_inputs, labels)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_theorem_one_the_students_trait_loss_falls(arch):
    """Theorem 1 on every architecture (its default activation): v = -grad L_T, alpha > 0, small
    eps => L_T(theta_0 + alpha dtheta_S) < L_T(theta_0), and the change is -alpha eps A to first
    order: its residual has log-log slope 2 (smooth activations, where the expansion holds)."""
    model, theta0, inputs = _problem(arch, seed=2)
    teacher = _teacher(arch, seed=2)
    v = teacher.update(model, theta0)
    loss, alpha = SoftCrossEntropy(), 0.5
    for eps in (1e-2, 1e-3, 1e-4):
        report = alignment_report(model, v, inputs, loss, eps, teacher=teacher, student_lr=alpha)
        assert report.A > 0 and report.teacher_loss_change_exact < 0, (eps, report)

    model, theta0, inputs = _problem(arch, seed=2, activation=SMOOTH[arch])
    v = teacher.update(model, theta0)
    a, _ = taylor_coefficients(model, theta0, inputs, loss, v)
    residuals = []
    for eps in STEPS:
        report = alignment_report(model, v, inputs, loss, eps, teacher=teacher, student_lr=alpha)
        residuals.append(report.teacher_loss_change_exact + alpha * eps * a)
    assert abs(loglog_slope(STEPS, residuals) - 2) < 0.2, residuals


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_student_init_law_is_first_order_on_every_architecture(arch):
    """dtheta_S(theta_0 + delta d) = K (eps v - delta d) + O(s^2) with eps = s, delta = 0.7 s:
    the vector residual and the residual of its projection on v both have slope 2."""
    model, theta0, inputs = _problem(arch, seed=5, activation=SMOOTH[arch])
    loss = SoftCrossEntropy()
    generator = torch.Generator().manual_seed(9)
    v = torch.randn(theta0.numel(), dtype=theta0.dtype, generator=generator)
    d = torch.randn(theta0.numel(), dtype=theta0.dtype, generator=generator)
    vector_residuals, inner_residuals = [], []
    for s in STEPS:
        eps, delta = s, 0.7 * s
        targets = distillation_targets(model, theta0 + eps * v, inputs)
        exact = student_update(model, theta0 + delta * d, inputs, targets, loss)
        predicted = gauss_newton_product(model, theta0, inputs, loss, eps * v - delta * d)
        vector_residuals.append(float(torch.linalg.vector_norm(exact - predicted)))
        inner_residuals.append(dot(exact - predicted, v))
    assert abs(loglog_slope(STEPS, vector_residuals) - 2) < 0.2, vector_residuals
    assert abs(loglog_slope(STEPS, inner_residuals) - 2) < 0.2, inner_residuals
    # the prediction is not the shared-init one: the offset term is first order too
    shared = gauss_newton_product(model, theta0, inputs, loss, STEPS[-1] * v)
    assert float(torch.linalg.vector_norm(predicted - shared)) > 10 * vector_residuals[-1]
