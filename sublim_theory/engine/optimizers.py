"""The one torch optimizer the project adds to ``torch.optim``: sign descent.

``update_rules`` holds every rule as a pure function of (gradient, state) for the theory's
one-step reports; the studies' training loops use ``torch.optim`` optimizers. SignSGD has no
``torch.optim`` counterpart, so it lives here once, for every testbed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from sublim_theory.errors import InputError

__all__ = ["OPTIMIZERS", "SignSGD", "make_optimizer"]

OPTIMIZERS = ("adam", "sgd", "signsgd")  # the names a training loop may be given


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


def make_optimizer(name: str, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` of :data:`OPTIMIZERS` over ``params``, torch's defaults otherwise.

    - ``adam``: ``torch.optim.Adam(params, lr=lr)`` (betas 0.9, 0.999, eps 1e-8, no decay);
    - ``sgd``: ``torch.optim.SGD(params, lr=lr)``: ``theta <- theta - lr * grad`` (no momentum);
    - ``signsgd``: :class:`SignSGD`: ``theta <- theta - lr * sign(grad)``.

    Returns:
        The optimizer.

    Raises:
        InputError: an unknown name.

    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "signsgd":
        return SignSGD(params, lr=lr)
    raise InputError(f"unknown optimizer {name!r}; use one of {list(OPTIMIZERS)}")
