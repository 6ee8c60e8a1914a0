"""Brute-force reference implementations: the oracle the fast engine is tested against.

Nothing here uses the closed-form curvature of ``losses.py`` or the jvp/vjp algebra of
``alignment.py``. Everything is formed explicitly with ``torch.func`` on tiny networks:

* the Jacobian J(x) (``jacrev``) and the loss Hessian M (``hessian`` of ``value`` in z),
  so K = E_x[J^T M J] is a P x P matrix;
* A and B as derivatives in eps of the exact alignment phi(eps) = <dtheta_S(eps), v>, where
  dtheta_S(eps) is the gradient of the imitation objective with the teacher's targets kept as
  a differentiable function of eps (no Taylor expansion is assumed anywhere).

Cost is O(N P k) memory and more: use only on networks with at most a few thousand parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, hessian, jacrev

from sublim_theory.engine.forward_ad import explicit_normalization
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss

__all__ = [
    "alignment_derivatives",
    "exact_alignment_function",
    "explicit_gauss_newton",
    "explicit_gauss_newton_product",
    "explicit_jacobian",
    "explicit_output_hessian",
    "explicit_target_curvature",
]


def explicit_jacobian(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, chunk_size: int | None = None
) -> Tensor:
    """J with shape (positions, k, P): every output's derivative in every parameter.

    ``chunk_size`` bounds how many output rows ``jacrev`` pulls back at once (memory).

    Returns:
        J.

    """
    jac = jacrev(model.as_function(inputs), chunk_size=chunk_size)(theta)
    k = jac.shape[-2]
    return jac.reshape(-1, k, theta.numel())


def explicit_gauss_newton_product(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    vector: Tensor,
    chunk_size: int | None = None,
) -> Tensor:
    """K q = J^T (M (J q)) / positions from the materialized Jacobian (the explicit baseline)."""
    jac = explicit_jacobian(model, theta, inputs, chunk_size)
    z0 = model(theta, inputs).detach().reshape(jac.shape[0], jac.shape[1])
    curvature = loss.hessian_vector_product(z0, jac @ vector)
    return torch.einsum("nkp,nk->p", jac, curvature) / jac.shape[0]


def explicit_output_hessian(loss: ImitationLoss, z0: Tensor) -> Tensor:
    """M at z = y = z0 for every position, shape (positions, k, k), by autograd of ``value``."""
    flat = z0.reshape(-1, z0.shape[-1])
    return torch.stack([hessian(lambda z, y=y: loss.value(z, y))(y) for y in flat])


def explicit_gauss_newton(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss
) -> Tensor:
    """K = E_x[J^T M J] as a dense P x P matrix."""
    jac = explicit_jacobian(model, theta, inputs)
    curvature = explicit_output_hessian(loss, model(theta, inputs).detach())
    return torch.einsum("nkp,nkl,nlq->pq", jac, curvature, jac) / jac.shape[0]


def exact_alignment_function(
    model: FunctionalModel, theta0: Tensor, inputs: Tensor, loss: ImitationLoss, v: Tensor
):
    """phi(eps) = <dtheta_S(eps), v> with dtheta_S = -grad_theta E_x l(f(theta, x), f(theta0 + eps v, x))."""

    def objective(theta: Tensor, eps: Tensor) -> Tensor:
        targets = model(theta0 + eps * v, inputs)
        return loss.value(model(theta, inputs), targets).mean()

    def phi(eps: Tensor) -> Tensor:
        return -torch.dot(grad(objective)(theta0, eps), v)

    return phi


def alignment_derivatives(
    model: FunctionalModel, theta0: Tensor, inputs: Tensor, loss: ImitationLoss, v: Tensor
) -> tuple[float, float]:
    """(A, B) = (phi'(0), phi''(0) / 2) by reverse-mode differentiation of the exact phi.

    Reverse mode on purpose: the engine uses nested forward mode. phi'' is a third derivative of
    the network, and torch's fused layer/instance norm kernels get third derivatives wrong in
    every mode (and second derivatives in forward-over-forward), so they are evaluated from
    elementary ops here too (``forward_ad.explicit_normalization``, itself tested against
    reverse-over-reverse and finite differences).

    Returns:
        ``(A, B)``.

    """
    phi = exact_alignment_function(model, theta0, inputs, loss, v)
    zero = torch.zeros((), dtype=theta0.dtype)
    with explicit_normalization():
        a = jacrev(phi)(zero)
        b = jacrev(jacrev(phi))(zero) / 2
    return float(a), float(b)


def explicit_target_curvature(loss: ImitationLoss, z0: Tensor, u: Tensor) -> Tensor:
    """G[u, u] = d^2/ds^2 grad_z l(z0, z0 + s u) at s = 0, by nested autograd of ``value``."""

    def gradient_at(s: Tensor) -> Tensor:
        return grad(lambda z: loss.value(z, z0 + s * u).sum())(z0)

    zero = torch.zeros((), dtype=z0.dtype)
    return jacrev(jacrev(gradient_at))(zero)
