"""Test helpers for our tests and for researchers testing their own models.

* ``TOLERANCES``: one table keyed by dtype.
* ``assert_allclose``: says which entries failed and by how much.
* ``loglog_slope``: orders of accuracy are slopes ("first order" = residual slope 2).
* ``assert_alignment_bound``: the theorem as an executable assertion on any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sublim_theory.alignment import (
    critical_step,
    distillation_targets,
    dot,
    first_order_coefficient,
    second_order_coefficient,
    student_update,
)
from sublim_theory.functional import FunctionalModel
from sublim_theory.losses import ImitationLoss

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-4, "atol": 1e-6},
}


def assert_allclose(
    actual: Tensor,
    expected: Tensor,
    name: str = "tensor",
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert |actual - expected| <= atol + rtol |expected| entrywise; report the worst entries.

    Tolerances default to ``TOLERANCES[expected.dtype]``.
    """
    tol = TOLERANCES.get(expected.dtype, TOLERANCES[torch.float32])
    rtol = tol["rtol"] if rtol is None else rtol
    atol = tol["atol"] if atol is None else atol
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    error = (actual.double() - expected.double()).abs()
    allowed = atol + rtol * expected.double().abs()
    bad = error > allowed
    if bad.any():
        worst = torch.topk((error - allowed).reshape(-1), min(3, int(bad.sum()))).indices
        details = ", ".join(
            f"[{i}] {actual.reshape(-1)[i]:.6g} vs {expected.reshape(-1)[i]:.6g}"
            for i in worst.tolist()
        )
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} entries differ (rtol={rtol}, atol={atol}); "
            f"max abs error {float(error.max()):.3g}; worst: {details}"
        )


def relative_error(actual: float | Tensor, expected: float | Tensor) -> float:
    """|actual - expected| / max(|expected|, tiny), in float64."""
    a, e = float(np.asarray(actual)), float(np.asarray(expected))
    return abs(a - e) / max(abs(e), 1e-300)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): the order of a residual."""
    x, y = np.log(np.asarray(xs, dtype=float)), np.log(np.abs(np.asarray(ys, dtype=float)))
    return float(np.polyfit(x, y, 1)[0])


def assert_alignment_bound(
    model: FunctionalModel,
    direction: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    theta0: Tensor | None = None,
    max_eps: float = 1e-3,
) -> float:
    """Assert the theorem on a model: at a small eps the exact one-step student moves toward v.

    Chooses eps = min(max_eps, eps*/2) with eps* = A/|B| (THEORY section 3), so that the
    quadratic eps A + eps^2 B is at least eps A / 2, then asserts the exact <dtheta_S, v> > 0.
    When A = 0 (J v in the null space of M, e.g. one softmax output) it asserts the exact
    alignment is 0 up to rounding instead. Returns the measured <dtheta_S, v>.
    """
    theta0 = model.flat_params() if theta0 is None else theta0
    a = first_order_coefficient(model, theta0, inputs, loss, direction)
    b = second_order_coefficient(model, theta0, inputs, loss, direction)
    eps = min(max_eps, critical_step(a, b) / 2)
    targets = distillation_targets(model, theta0 + eps * direction, inputs)
    inner = dot(student_update(model, theta0, inputs, targets, loss), direction)
    scale = math.sqrt(max(a, 0.0)) * float(torch.linalg.vector_norm(direction.double()))
    if a < -1e-12 * max(scale, 1.0):
        raise AssertionError(f"A = E[u^T M u] = {a:.3e} < 0: the loss curvature M is not PSD")
    if a == 0.0:
        if abs(inner) > 1e-12 * max(abs(eps), 1e-300):
            raise AssertionError(f"A = 0 but the exact alignment is {inner:.3e}, not 0")
        return inner
    if not inner > 0:
        raise AssertionError(
            f"exact <dtheta_S, v> = {inner:.3e} <= 0 at eps = {eps:.3e} (A = {a:.3e}, B = {b:.3e}, "
            f"predicted {eps * a + eps**2 * b:.3e})"
        )
    return inner
