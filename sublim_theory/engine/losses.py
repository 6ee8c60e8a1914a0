"""Imitation losses l(z, y) on network outputs z given teacher targets y, and their output curvature.

Each loss is minimized at z = y, so grad_z l(y, y) = 0 and (theory/alignment.md, Lemma 1)

    d/dy grad_z l(z, y) |_{z=y} = -M,     M = Hess_zz l(y, y)  (positive semidefinite).

A loss here knows, in closed form and without ever forming a k x k matrix:

* ``value(z, y)``               l per position (the last axis holds the k outputs),
* ``output_gradient(z, y)``     grad_z l,
* ``hessian_vector_product``    M u at z = y = z0,
* ``target_curvature``          G[u, u] = d^2/ds^2 grad_z l(z0, z0 + s u) at s = 0 (theory section 4),
                                a mixed derivative (one in z, two in the target y),

each restricted to a subset S of the outputs (the paper's auxiliary logits): then
M = P_S^T M_S P_S, and the gradient is zero outside S. All methods accept outputs of shape
``(..., k)``; the engine averages over every leading axis (samples, and sequence positions).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from sublim_theory.errors import InputError

__all__ = [
    "LOSSES",
    "ImitationLoss",
    "KLDivergence",
    "SoftCrossEntropy",
    "SquaredError",
    "make_loss",
]


def _softmax_first_derivative(p: Tensor, u: Tensor) -> Tensor:
    """D softmax(z)[u] = p * (u - <p, u>) with p = softmax(z)."""
    return p * (u - (p * u).sum(-1, keepdim=True))


def _softmax_second_derivative(p: Tensor, u: Tensor) -> Tensor:
    """D^2 softmax(z)[u, u] = p * ((u - <p,u>)^2 - Var_p(u)) with p = softmax(z)."""
    centered = u - (p * u).sum(-1, keepdim=True)
    variance = (p * centered**2).sum(-1, keepdim=True)
    return p * (centered**2 - variance)


class ImitationLoss:
    """Base class: subset handling and the public API; subclasses implement the math on S."""

    name: str = "loss"

    def __init__(self, outputs: Sequence[int] | None = None) -> None:
        """Check and keep the output subset (distinct indices >= 0, non-empty; None: all)."""
        if outputs is not None:
            try:
                if any(isinstance(i, bool) for i in outputs):
                    raise TypeError
                outputs = [operator.index(i) for i in outputs]
            except TypeError:
                raise InputError(
                    f"the output subset {list(outputs)} must list integer indices"
                ) from None
            if any(i < 0 for i in outputs):
                # -1 would silently alias the last output (12 of 13): name outputs from 0
                raise InputError(
                    f"the output subset {outputs} has negative indices; count outputs from 0"
                )
            if not outputs:
                raise InputError("the output subset is empty; pass None to use all outputs")
            if len(set(outputs)) != len(outputs):
                raise InputError(f"the output subset {outputs} repeats an index")
        self.outputs: list[int] | None = outputs

    # --- subset plumbing -------------------------------------------------------------------
    def _index(self, z: Tensor) -> Tensor | None:
        if self.outputs is None:
            return None
        k = z.shape[-1]
        bad = [i for i in self.outputs if not i < k]
        if bad:
            raise InputError(
                f"output subset {self.outputs} has indices {bad} outside the model's {k} outputs"
            )
        return torch.tensor(self.outputs, device=z.device)

    def _restrict(self, z: Tensor) -> Tensor:
        index = self._index(z)
        return z if index is None else z.index_select(-1, index)

    def _embed(self, restricted: Tensor, like: Tensor) -> Tensor:
        index = self._index(like)
        if index is None:
            return restricted
        full = torch.zeros(like.shape, dtype=restricted.dtype, device=restricted.device)
        return full.index_copy(-1, index, restricted)

    def describe(self) -> str:
        """The loss's name with its output subset, e.g. ``kl[outputs=[10, 11]]``."""
        subset = "" if self.outputs is None else f"[outputs={self.outputs}]"
        return f"{self.name}{subset}"

    # --- public API (full output space) -----------------------------------------------------
    def value(self, z: Tensor, y: Tensor) -> Tensor:
        """l(z, y) per position, shape ``z.shape[:-1]``."""
        if z.shape != y.shape:
            raise InputError(
                f"outputs {tuple(z.shape)} and targets {tuple(y.shape)} differ in shape"
            )
        return self._value(self._restrict(z), self._restrict(y))

    def output_gradient(self, z: Tensor, y: Tensor) -> Tensor:
        """grad_z l(z, y), shape ``z.shape`` (zero outside the subset)."""
        return self._embed(self._gradient(self._restrict(z), self._restrict(y)), z)

    def hessian_vector_product(self, z0: Tensor, u: Tensor) -> Tensor:
        """M u with M = Hess_zz l at z = y = z0; never forms M."""
        return self._embed(self._hvp(self._restrict(z0), self._restrict(u)), z0)

    def target_curvature(self, z0: Tensor, u: Tensor) -> Tensor:
        """G[u, u] = d^2/ds^2 grad_z l(z0, z0 + s u) at s = 0: one derivative in z, two in y.

        Not the loss's third derivative in z: differentiating grad_z l(y, y) = 0 twice gives
        G[u, u] = -D^3_z l[u, u] - 2 (D_y Hess_zz l)[u] u, which is -D^3_z l[u, u] only when
        Hess_zz l does not depend on the target y (true for the three losses here).

        Returns:
            G[u, u], shape ``z0.shape`` (zero outside the subset).

        """
        return self._embed(self._curvature(self._restrict(z0), self._restrict(u)), z0)

    # --- math on the subset, implemented by subclasses -------------------------------------
    def _value(self, z: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _gradient(self, z: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _hvp(self, z0: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _curvature(self, z0: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError


class SquaredError(ImitationLoss):
    """l = (c/2) ||z - y||^2, so M = c I and G = 0.

    ``torch.nn.MSELoss(reduction="mean")`` over k outputs is c = 2/k.
    """

    name = "squared"

    def __init__(self, scale: float = 1.0, outputs: Sequence[int] | None = None) -> None:
        """Check the scale c > 0 and keep the output subset."""
        super().__init__(outputs)
        if not scale > 0:
            raise InputError(f"squared-error scale c must be > 0, got {scale}")
        self.scale = float(scale)

    def _value(self, z: Tensor, y: Tensor) -> Tensor:
        return 0.5 * self.scale * ((z - y) ** 2).sum(-1)

    def _gradient(self, z: Tensor, y: Tensor) -> Tensor:
        return self.scale * (z - y)

    def _hvp(self, z0: Tensor, u: Tensor) -> Tensor:
        return self.scale * u

    def _curvature(self, z0: Tensor, u: Tensor) -> Tensor:
        return torch.zeros_like(u)


class SoftCrossEntropy(ImitationLoss):
    """l = -softmax(y) . log softmax(z) (soft targets): M = diag(p) - p p^T, p = softmax(z0).

    M u = p*u - p (p.u) and u^T M u = Var_p(u) >= 0. grad_z l = softmax(z) - softmax(y), so
    G[u, u] = -D^2 softmax(z0)[u, u]. With one output, p = 1 and M = 0 exactly.
    """

    name = "softmax_ce"

    def _value(self, z: Tensor, y: Tensor) -> Tensor:
        return -(torch.softmax(y, -1) * torch.log_softmax(z, -1)).sum(-1)

    def _gradient(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.softmax(z, -1) - torch.softmax(y, -1)

    def _hvp(self, z0: Tensor, u: Tensor) -> Tensor:
        return _softmax_first_derivative(torch.softmax(z0, -1), u)

    def _curvature(self, z0: Tensor, u: Tensor) -> Tensor:
        return -_softmax_second_derivative(torch.softmax(z0, -1), u)


class KLDivergence(ImitationLoss):
    """l = KL(softmax(y/tau) || softmax(z/tau)) (no tau^2 factor).

    M = (1/tau^2)(diag(p) - p p^T) with p = softmax(z0/tau); grad_z l = (softmax(z/tau) -
    softmax(y/tau))/tau, so G[u, u] = -(1/tau^3) D^2 softmax(z0/tau)[u, u].
    """

    name = "kl"

    def __init__(self, temperature: float = 1.0, outputs: Sequence[int] | None = None) -> None:
        """Check the temperature tau > 0 and keep the output subset."""
        super().__init__(outputs)
        if not temperature > 0:
            raise InputError(f"KL temperature tau must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def _value(self, z: Tensor, y: Tensor) -> Tensor:
        tau = self.temperature
        log_q = torch.log_softmax(y / tau, -1)
        return (log_q.exp() * (log_q - torch.log_softmax(z / tau, -1))).sum(-1)

    def _gradient(self, z: Tensor, y: Tensor) -> Tensor:
        tau = self.temperature
        return (torch.softmax(z / tau, -1) - torch.softmax(y / tau, -1)) / tau

    def _hvp(self, z0: Tensor, u: Tensor) -> Tensor:
        tau = self.temperature
        return _softmax_first_derivative(torch.softmax(z0 / tau, -1), u) / tau**2

    def _curvature(self, z0: Tensor, u: Tensor) -> Tensor:
        tau = self.temperature
        return -_softmax_second_derivative(torch.softmax(z0 / tau, -1), u) / tau**3


LOSSES: dict[str, type[ImitationLoss]] = {
    "squared": SquaredError,
    "softmax_ce": SoftCrossEntropy,
    "kl": KLDivergence,
}


def make_loss(name: str, outputs: Sequence[int] | None = None, **options: float) -> ImitationLoss:
    """Build an imitation loss by name (``squared``, ``softmax_ce``, ``kl``).

    Args:
        name: ``squared``, ``softmax_ce`` or ``kl``.
        outputs: the subset S of output indices the loss sees (None: all outputs).
        **options: ``scale`` (squared error c) or ``temperature`` (KL tau).

    Returns:
        The loss, which knows its value, gradient, M u and G[u, u] in closed form.

    Raises:
        InputError: an unknown name or option, or a bad subset or option value.

    """
    if name not in LOSSES:
        raise InputError(f"unknown loss '{name}'; choose one of {sorted(LOSSES)}")
    cls = LOSSES[name]
    allowed = {"squared": {"scale"}, "kl": {"temperature"}}.get(name, set())
    unknown = set(options) - allowed
    if unknown:
        raise InputError(
            f"loss '{name}' takes no option(s) {sorted(unknown)}; it takes {sorted(allowed)}"
        )
    return cls(outputs=outputs, **options)
