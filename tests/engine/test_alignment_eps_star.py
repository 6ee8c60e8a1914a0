"""eps* is the root of a truncated quadratic: the report says when it can be trusted.

Oracle: a one-parameter "network" f(theta, x) = g(theta) x with g a cubic polynomial, the squared
error (c = 1) and one input x = 1. At theta_0 = 0 with v = 1 the student's update is exactly
dtheta_S(eps) = g'(0) (g(eps) - g(0)), so with g(0) = 0 and g'(0) = 1,

    phi(eps) = <dtheta_S(eps), v> = g(eps) = eps + b eps^2 + c eps^3,

A = 1, B = b, and the exact sign change of phi is a root of 1 + b eps + c eps^2, found in closed
form. The cubic coefficient c sets how far the quadratic's root eps* = 1/|b| is from it.
"""

import math

import pytest
import torch
from torch import nn

from sublim_theory.engine.alignment import taylor_coefficients
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.report import EPS_STAR_TOLERANCE, alignment_report, critical_step_check

# float64 rounding on O(1) values through a few dozen operations (forward, jvp of jvp, backward):
# far below every difference the tests resolve (>= 1e-3).
ROUNDING = 1e-13


class Polynomial(nn.Module):
    """f(theta, x) = (theta + b theta^2 + c theta^3) x, one parameter starting at 0."""

    def __init__(self, b: float, c: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.b, self.c = b, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.theta
        return (t + self.b * t**2 + self.c * t**3) * x


def _problem(b: float, c: float):
    model = FunctionalModel(Polynomial(b, c))
    inputs = torch.ones(1, 1, dtype=torch.float64)
    v = torch.ones(1, dtype=torch.float64)
    return model, inputs, v, make_loss("squared")


def _exact_sign_change(b: float, c: float) -> float:
    """Smallest eps > 0 with 1 + b eps + c eps^2 = 0; inf when there is none."""
    if c == 0:
        return -1 / b if b < 0 else math.inf
    disc = b * b - 4 * c
    if disc < 0:
        return math.inf
    roots = [(-b - math.sqrt(disc)) / (2 * c), (-b + math.sqrt(disc)) / (2 * c)]
    positive = [r for r in roots if r > 0]
    return min(positive) if positive else math.inf


def test_oracle_coefficients_match_the_polynomial():
    model, inputs, v, loss = _problem(-0.5, 0.1)
    a, b = taylor_coefficients(model, model.flat_params(), inputs, loss, v)
    assert abs(a - 1) <= ROUNDING and abs(b + 0.5) <= ROUNDING


@pytest.mark.parametrize("c", [0.0, 0.01, -0.01])
def test_small_cubic_term_is_trusted_and_residual_estimates_the_root_error(c):
    b = -0.5  # eps* = 2
    model, inputs, v, loss = _problem(b, c)
    report = alignment_report(model, v, inputs, loss, 1e-3)
    assert report.eps_star == pytest.approx(2.0, abs=ROUNDING)
    # phi(eps*) = c eps*^3, so the residual is c eps*^3 / (eps* A) = 4c exactly.
    assert abs(report.eps_star_residual - 4 * c) <= ROUNDING
    assert report.eps_star_trusted and "truncated quadratic" in report.eps_star_note
    # The residual r is the relative error of eps* to first order: here the exact error is
    # delta = 4c (1 + delta)^2 = r + 2 r^2 + 5 r^3 + ..., so |delta - r| <= 3 r^2 for |r| <= 0.05.
    relative_error = _exact_sign_change(b, c) / report.eps_star - 1
    assert abs(relative_error - report.eps_star_residual) <= 3 * report.eps_star_residual**2


@pytest.mark.parametrize("c", [0.1, -0.1])
def test_large_cubic_term_puts_eps_star_outside_the_trusted_range(c):
    b = -0.5
    model, inputs, v, loss = _problem(b, c)
    report = alignment_report(model, v, inputs, loss, 1e-3)
    exact = _exact_sign_change(b, c)
    # The oracle: eps* = 2 is far from the true sign change (none at all for c = 0.1; 1.53 for
    # c = -0.1), and the report says so instead of presenting eps* as the threshold.
    assert math.isinf(exact) or abs(exact / report.eps_star - 1) > EPS_STAR_TOLERANCE
    assert abs(report.eps_star_residual - 4 * c) <= ROUNDING
    assert not report.eps_star_trusted
    assert "OUTSIDE" in report.eps_star_note
    assert report.to_dict()["eps_star_trusted"] is False


def test_no_root_of_the_quadratic_is_not_a_guarantee():
    # B = +0.5 > 0: the quadratic never crosses zero, yet phi = eps + eps^2/2 - eps^3 does.
    b, c = 0.5, -1.0
    model, inputs, v, loss = _problem(b, c)
    report = alignment_report(model, v, inputs, loss, 1e-3)
    assert report.to_dict()["eps_star"] is None and not report.eps_star_trusted
    assert math.isnan(report.eps_star_residual)
    assert "not a guarantee" in report.eps_star_note
    crossing = _exact_sign_change(b, c)
    beyond = alignment_report(model, v, inputs, loss, 1.5 * crossing)
    assert beyond.inner_exact < 0  # the exact student moves away from the teacher there


def test_zero_first_order_coefficient_has_no_meaningful_eps_star():
    model, inputs, v, loss = _problem(-0.5, 0.0)
    check = critical_step_check(model, model.flat_params(), inputs, loss, v, 0.0, -0.5)
    assert not check.trusted and math.isnan(check.residual) and "A = 0" in check.note


def test_overflowing_teacher_at_eps_star_is_flagged():
    model, inputs, v, loss = _problem(-1e-200, 1.0)  # eps* = 1e200: theta^3 overflows
    check = critical_step_check(model, model.flat_params(), inputs, loss, v, 1.0, -1e-200)
    assert not check.trusted and "overflow" in check.note
