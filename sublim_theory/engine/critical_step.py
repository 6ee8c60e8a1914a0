"""eps* = A/|B|, the root of the truncated second-order alignment, and whether it can be trusted.

The exact alignment phi(eps) = <dtheta_S(eps), v> is eps A + eps^2 B + O(eps^3) (theory/alignment.md
section 3). When B < 0 the truncated quadratic changes sign at eps* = A/|B|; ``critical_step_check``
evaluates phi there to say whether the dropped cubic term is small enough for eps* to mean the sign
change. :func:`sublim_theory.engine.report.alignment_report` reports both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sublim_theory.engine.alignment import distillation_targets, dot, student_update
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss

__all__ = [
    "EPS_STAR_TOLERANCE",
    "CriticalStepCheck",
    "critical_step",
    "critical_step_check",
    "judge_critical_step",
]


def critical_step(a: float, b: float) -> float:
    """eps* = A/|B|, the positive root of the TRUNCATED quadratic eps A + eps^2 B (B < 0).

    Returns inf when B >= 0: the quadratic then has no positive root, which is a statement about
    the truncation only, not a guarantee that the exact alignment stays positive for large eps.
    Whether the cubic remainder is small at eps* is judged by :func:`critical_step_check`.

    Args:
        a: A, the first-order coefficient.
        b: B, the second-order coefficient.

    Returns:
        A/|B| when B < 0, else inf.

    """
    return a / abs(b) if b < 0 else math.inf


# |phi(eps*)| / (eps* A) above this: eps* lies outside the range where eps A + eps^2 B
# describes phi. It estimates the relative distance from eps* to the exact sign change (see
# critical_step_check), so 0.1 means "eps* is right to about 10%".
EPS_STAR_TOLERANCE = 0.1


@dataclass(frozen=True)
class CriticalStepCheck:
    """How far the truncated quadratic's root eps* can be trusted (``critical_step_check``).

    Attributes:
        residual: phi(eps*) / (eps* A), signed, with phi(eps) = <dtheta_S(eps), v> exact; NaN
            when there is no eps* (B >= 0 or A <= 0) or the teacher's outputs at eps* overflow.
        trusted: |residual| <= EPS_STAR_TOLERANCE.
        note: one line saying which case applies.

    """

    residual: float
    trusted: bool
    note: str


def critical_step_check(
    model: FunctionalModel,
    theta0: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    a: float,
    b: float,
    batch_size: int | None = None,
) -> CriticalStepCheck:
    """Evaluate the exact alignment phi at eps* = A/|B| to see whether eps* means anything.

    The quadratic vanishes at eps*, so phi(eps*) is exactly the remainder R(eps*) = O(eps*^3)
    that the truncation drops. Near eps*, phi'(eps*) = A + 2 eps* B + R'(eps*) = -A + R'(eps*),
    so one Newton step from eps* moves it by R(eps*) / A; the returned ``residual`` is that move
    relative to eps* (the estimated relative error of eps* as the sign change of phi). Costs one
    forward pass of the teacher and one student gradient at eps*, at the shared init theta0.
    It looks at one point: a phi that changes sign twice before eps* would pass unseen.

    Args:
        model: the network.
        theta0: the shared init.
        inputs: the distillation inputs.
        loss: the imitation loss.
        v: the teacher's direction.
        a: A from :func:`taylor_coefficients`.
        b: B from :func:`taylor_coefficients`.
        batch_size: process inputs in chunks of this many samples.

    Returns:
        The residual, whether it is within ``EPS_STAR_TOLERANCE``, and a one-line note.

    """

    def exact_alignment(eps_star: float) -> float | None:
        targets = distillation_targets(model, theta0 + eps_star * v, inputs, batch_size)
        if not torch.isfinite(targets).all():
            return None
        return dot(student_update(model, theta0, inputs, targets, loss, batch_size), v)

    return judge_critical_step(a, b, exact_alignment)


def judge_critical_step(
    a: float, b: float, exact_alignment: Callable[[float], float | None]
) -> CriticalStepCheck:
    """The verdict of :func:`critical_step_check`, given phi(eps) (None: the targets overflow)."""
    if not b < 0:
        return CriticalStepCheck(
            math.nan,
            False,
            "no root of the quadratic (B >= 0); not a guarantee for large eps: the cubic "
            "remainder is unbounded",
        )
    if not a > 0:
        return CriticalStepCheck(
            math.nan, False, "A = 0: no first-order alignment, eps* = 0 has no meaning"
        )
    eps_star = a / abs(b)
    overflow = CriticalStepCheck(
        math.nan,
        False,
        "the teacher's outputs or the student's update overflow at eps*: eps* is far outside "
        "the quadratic's range",
    )
    exact = exact_alignment(eps_star)
    if exact is None or not math.isfinite(exact):
        return overflow
    residual = exact / (eps_star * a)
    if abs(residual) <= EPS_STAR_TOLERANCE:
        note = (
            f"root of the truncated quadratic; exact alignment there is {residual:+.2g} x eps* A, "
            f"so eps* is the sign change to about {abs(residual):.0%}"
        )
        return CriticalStepCheck(residual, True, note)
    note = (
        f"root of the truncated quadratic, OUTSIDE its range: exact alignment there is "
        f"{residual:+.2g} x eps* A (|.| > {EPS_STAR_TOLERANCE:g}); not the sign change"
    )
    return CriticalStepCheck(residual, False, note)
