"""The training loops' optimizers by name, and the one the project adds to ``torch.optim``.

``update_rules`` holds every rule as a pure function of (gradient, state) for the theory's
one-step reports; the studies' training loops use ``torch.optim`` optimizers, built by name
from :data:`OPTIMIZERS` (:func:`make_optimizer`). Sign descent has no ``torch.optim``
counterpart, so it lives here once (:class:`SignSGD`), for every testbed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor

from sublim_theory.errors import InputError

__all__ = ["OPTIMIZERS", "SignSGD", "make_optimizer"]


class SignSGD(torch.optim.Optimizer):
    """Sign descent: ``theta <- theta - lr * sign(grad + weight_decay * theta)`` elementwise.

    No momentum and no state (theory/optimizers.md, the sign-step section; ``update_rules``'s
    ``signsgd`` rule is the same step as a pure function). Parameters without a gradient (a LoRA
    model's frozen base) are left untouched.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, weight_decay: float = 0.0) -> None:
        """Args: params to update, step size ``lr`` > 0, L2 ``weight_decay`` >= 0."""
        if not lr > 0:
            raise InputError(f"signsgd needs a learning rate > 0, got {lr}")
        if not weight_decay >= 0:
            raise InputError(f"signsgd needs a weight decay >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """One sign step on every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad
                if group["weight_decay"]:
                    direction = direction.add(p, alpha=group["weight_decay"])
                p.sub_(torch.sign(direction), alpha=group["lr"])


OPTIMIZERS: Mapping[str, type[torch.optim.Optimizer]] = MappingProxyType(
    {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "signsgd": SignSGD}
)


def make_optimizer(
    name: str,
    params: Iterable[Tensor],
    lr: float,
    weight_decay: float = 0.0,
    *,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` of :data:`OPTIMIZERS` over ``params`` (L2 ``weight_decay``).

    Args:
        name: ``adam``, ``sgd`` or ``signsgd``.
        params: the tensors to update.
        lr: the learning rate.
        weight_decay: L2 weight decay (added to the gradient), 0 by default.
        fused: Adam as one kernel per step where torch supports it (else the plain Adam).

    Returns:
        The optimizer.

    Raises:
        InputError: for an unknown name.

    """
    if name not in OPTIMIZERS:
        raise InputError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
    params = list(params)
    if name == "adam" and fused:
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:
            pass
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)
