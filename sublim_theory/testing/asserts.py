"""Test helpers for our tests and for researchers testing their own models.

* ``TOLERANCES``: one table keyed by dtype.
* ``assert_allclose``: says which entries failed and by how much.
* ``loglog_slope``: orders of accuracy are slopes ("first order" = residual slope 2).
* ``assert_within_rounding``, ``taylor_rounding_scales``, ``update_rounding_scales``: the error
  model. A tolerance is kappa * u * (the size of the terms a quantity is summed from), so a
  quantity built by cancellation is compared on the scale of its terms, not of itself.
* ``assert_alignment_bound``: the theorem as an executable assertion on any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp

from sublim_theory.engine.alignment import (
    distillation_targets,
    dot,
    first_order_coefficient,
    second_order_coefficient,
    student_update,
)
from sublim_theory.engine.forward_ad import explicit_normalization
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss
from sublim_theory.engine.report import critical_step

__all__ = [
    "ROUNDING_STEPS",
    "TOLERANCES",
    "assert_alignment_bound",
    "assert_allclose",
    "assert_within_rounding",
    "digits_lost",
    "loglog_slope",
    "relative_error",
    "taylor_rounding_scales",
    "unit_roundoff",
    "update_rounding_scales",
]

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

    Raises:
        AssertionError: the shapes differ, or an entry is outside the tolerance.

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


# --------------------------------------------------------------------------------------------
# error model: tolerances follow from rounding scaled by the sizes involved
# --------------------------------------------------------------------------------------------
ROUNDING_STEPS = 2**12
"""kappa: how many unit roundoffs a tiny test network's forward pass, jvp and reductions may
accumulate relative to the magnitudes summed (a few hundred operations per output, each
contributing at most u times the size of its operands, with a safety factor of ~10)."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """The unit roundoff u (2^-53 in float64, 2^-24 in float32): the error of one rounding."""
    return torch.finfo(dtype).eps / 2


def assert_within_rounding(
    actual: float,
    expected: float,
    scale: float,
    name: str,
    dtype: torch.dtype = torch.float64,
    steps: float = ROUNDING_STEPS,
) -> None:
    """Assert |actual - expected| <= steps * u * scale.

    ``scale`` is the size of the terms the quantity is computed from (for an inner product
    ``||a|| ||b||``, for a sum the sum of absolute values), not the size of the result: a
    result built by cancellation loses digits relative to its terms, not to itself.

    Raises:
        AssertionError: naming the quantity, both values, the error and the bound.

    """
    bound = steps * unit_roundoff(dtype) * scale
    error = abs(float(actual) - float(expected))
    if not error <= bound:
        raise AssertionError(
            f"{name}: {float(actual):.17g} vs {float(expected):.17g}: error {error:.3g} > "
            f"{steps:g} u * scale = {bound:.3g} (scale {scale:.3g}, {digits_lost(error, scale)})"
        )


def digits_lost(error: float, scale: float) -> str:
    """A short phrase: how many decimal digits an error of this size leaves relative to scale."""
    if error <= 0 or scale <= 0:
        return "no digits lost"
    return f"{-math.log10(error / scale):.1f} digits agree"


def taylor_rounding_scales(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss, v: Tensor
) -> tuple[float, float]:
    """Sizes of the terms A and B are summed from: the scale of their rounding errors.

    With u = J v, w = D^2 f[v, v], mu = trace(M) >= ||M|| per position (M is PSD):
    scale_A = E[mu ||u||^2] bounds |u^T M u| term by term, and
    scale_B = (1/2) E[mu ||u|| (||w|| + ||u||^2) + ||u|| ||G[u, u]||] bounds the terms of B.
    Cancellation between positions, or inside u^T M w, loses digits relative to these.

    Returns:
        ``(scale of A, scale of B)``.

    """
    f = model.as_function(inputs)
    with torch.no_grad(), explicit_normalization():
        (z0, u), (_, w) = jvp(lambda t: jvp(f, (t,), (v,)), (theta,), (v,))
    k = z0.shape[-1]
    z0, u, w = (a.reshape(-1, k).double() for a in (z0, u, w))
    trace = _curvature_trace(loss, z0)
    u_norm, w_norm = u.norm(dim=-1), w.norm(dim=-1)
    curvature = loss.target_curvature(z0, u).norm(dim=-1)
    scale_a = (trace * u_norm**2).mean()
    scale_b = 0.5 * (trace * u_norm * (w_norm + u_norm**2) + u_norm * curvature).mean()
    return float(scale_a), float(scale_b)


def _curvature_trace(loss: ImitationLoss, z0: Tensor) -> Tensor:
    """trace(M) per position (>= ||M|| since M is PSD), from k products with basis vectors."""
    k = z0.shape[-1]
    basis = torch.eye(k, dtype=z0.dtype, device=z0.device)
    return sum(loss.hessian_vector_product(z0, basis[i].expand_as(z0))[..., i] for i in range(k))


def update_rounding_scales(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss
) -> tuple[float, float]:
    """Sizes of the terms the student update and the Gauss-Newton product are summed from.

    The exact update dtheta_S = -E[J^T grad_z l(z, y)] is small (O(eps)) but grad_z l is a
    difference of O(1) quantities (softmax(z) - softmax(y), or c (z - y) with outputs of size
    ||z0||): its rounding error is ~u mu (1 + ||z0||) per position, pulled back by J^T. Returns
    (scale_update, scale_gauss_newton) = (E[||J||_F mu (1 + ||z0||)], E[||J||_F^2 mu]) with
    mu = trace(M); ``scale_gauss_newton * ||q||`` is the scale of K q. Uses the explicit
    Jacobian: tiny networks only.

    Returns:
        ``(scale of the update, scale of K v)``.

    """
    from sublim_theory.testing.reference import (
        explicit_jacobian,  # the oracle module, tiny nets only
    )

    with torch.no_grad():
        z0 = model(theta, inputs)
    jacobian_norm = explicit_jacobian(model, theta, inputs).detach().double().norm(dim=(1, 2))
    z0 = z0.reshape(-1, z0.shape[-1]).double()
    mu = _curvature_trace(loss, z0)
    scale_update = (jacobian_norm * mu * (1 + z0.norm(dim=-1))).mean()
    scale_gauss_newton = (jacobian_norm**2 * mu).mean()
    return float(scale_update), float(scale_gauss_newton)


def assert_alignment_bound(
    model: FunctionalModel,
    direction: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    theta0: Tensor | None = None,
    max_eps: float = 1e-3,
) -> float:
    """Assert the theorem on a model: at a small eps the exact one-step student moves toward v.

    Chooses eps = min(max_eps, eps*/2) with eps* = A/|B| (theory/alignment.md section 4), so that the
    quadratic eps A + eps^2 B is at least eps A / 2, then asserts the exact <dtheta_S, v> > 0.
    When A = 0 (J v in the null space of M, e.g. one softmax output) it asserts the exact
    alignment is 0 up to rounding instead. Returns the measured <dtheta_S, v>.

    Returns:
        The measured <dtheta_S, v>.

    Raises:
        AssertionError: A < 0, or the exact alignment is not > 0 (A > 0) or not 0 (A = 0).

    """
    theta0 = model.flat_params() if theta0 is None else theta0
    a = first_order_coefficient(model, theta0, inputs, loss, direction)
    b = second_order_coefficient(model, theta0, inputs, loss, direction)
    eps = min(max_eps, critical_step(a, b) / 2)
    targets = distillation_targets(model, theta0 + eps * direction, inputs)
    inner = dot(student_update(model, theta0, inputs, targets, loss), direction)
    # A is a sum of PSD quadratic forms: negative only by rounding, on the scale of its terms
    scale_a, _ = taylor_rounding_scales(model, theta0, inputs, loss, direction)
    if a < -ROUNDING_STEPS * unit_roundoff(model.dtype) * scale_a:
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
