"""Multi-step distillation trajectories batched over seeds (outside Theorem 1: measured, not proven).

The theorem covers one gradient step. Here the student takes T full-batch steps of SGD or Adam
on the imitation loss L_S(theta) = E_x[l(f(theta, x), y(x))], y = f(theta_T, x), from theta_S0,
and every step t = 1..T records

    cos(step_t, v)                                   step_t = theta_S,t - theta_S,t-1
    cos(theta_S,t - theta_S0, theta_T - theta_0)     = cos(theta_S,t - theta_S0, v)  (eps > 0)
    L_T(theta_S,t)                                   the student's teacher loss (the trait)
    L_S(theta_S,t)                                   the imitation loss

Step 0 holds the start (losses at theta_S0, cosines undefined = NaN).

Seeds are independent problems of identical shapes: ``map_over_seeds`` runs one per-seed pure
function over stacked arguments with ``torch.func.vmap`` (one batched kernel per op), or with a
Python loop where vmap cannot run. Both paths evaluate the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, vmap

from sublim_theory.engine.alignment import batched_cosine
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss
from sublim_theory.errors import InputError

__all__ = [
    "OPTIMIZERS",
    "SeedFunction",
    "StackedOptimizer",
    "TeacherLossFn",
    "map_over_seeds",
    "student_trajectory",
]

SeedFunction = Callable[..., dict[str, Tensor]]
TeacherLossFn = Callable[[Tensor, Tensor], Tensor]
OPTIMIZERS = ("sgd", "adam")


def map_over_seeds(function: SeedFunction, use_vmap: bool = True) -> SeedFunction:
    """Apply a per-seed function ``(*tensors) -> dict[str, Tensor]`` along axis 0 of its arguments.

    With ``use_vmap`` the batch runs through ``torch.func.vmap``; otherwise each seed runs in turn
    and the results are stacked (the fallback for modules vmap cannot trace).

    Returns:
        The function mapped over the seeds (``vmap`` or a loop).

    """
    if use_vmap:
        return vmap(function)

    def looped(*arguments: Tensor) -> dict[str, Tensor]:
        results = [function(*(a[i] for a in arguments)) for i in range(arguments[0].shape[0])]
        return {key: torch.stack([r[key] for r in results]) for key in results[0]}

    return looped


class StackedOptimizer:
    """SGD or Adam on a stack of flat parameter vectors (one row per seed), written out.

    SGD: theta <- theta - lr g.  Adam (Kingma & Ba, as ``torch.optim.Adam`` with defaults):
    m <- b1 m + (1 - b1) g,  s <- b2 s + (1 - b2) g^2,
    theta <- theta - lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + 1e-8).
    """

    def __init__(self, name: str, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        """Check the optimizer's name and ``lr`` (finite, > 0); start with no moments."""
        if name not in OPTIMIZERS:
            raise InputError(f"unknown optimizer '{name}'; choose one of {list(OPTIMIZERS)}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise InputError(f"{name} learning rate must be a finite number > 0, got {lr}")
        self.name, self.lr, self.betas = name, float(lr), betas
        self.step_count = 0
        self.first_moment: Tensor | None = None
        self.second_moment: Tensor | None = None

    def step(self, theta: Tensor, gradient: Tensor) -> Tensor:
        """Return the updated parameters (a new tensor)."""
        self.step_count += 1
        if self.name == "sgd":
            return theta - self.lr * gradient
        b1, b2 = self.betas
        if self.first_moment is None:
            self.first_moment = torch.zeros_like(gradient)
            self.second_moment = torch.zeros_like(gradient)
        self.first_moment = b1 * self.first_moment + (1 - b1) * gradient
        self.second_moment = b2 * self.second_moment + (1 - b2) * gradient**2
        m_hat = self.first_moment / (1 - b1**self.step_count)
        s_hat = self.second_moment / (1 - b2**self.step_count)
        return theta - self.lr * m_hat / (s_hat.sqrt() + 1e-8)


def student_trajectory(
    model: FunctionalModel,
    loss: ImitationLoss,
    theta_start: Tensor,
    inputs: Tensor,
    targets: Tensor,
    direction: Tensor,
    teacher_loss_fn: TeacherLossFn,
    teacher_inputs: Tensor,
    teacher_targets: Tensor,
    optimizer: str,
    lr: float,
    steps: int,
    use_vmap: bool = True,
) -> dict[str, Tensor]:
    """Train S students (one per seed) for ``steps`` full-batch steps and record the trajectory.

    Args:
        model: the functional model (shared architecture; parameters are passed per seed).
        loss: the imitation loss l(z, y).
        theta_start: theta_S0, shape (S, P).
        inputs: distillation inputs, shape (S, N, ...).
        targets: teacher outputs y = f(theta_T, x), shape (S, N, ..., k).
        direction: the teacher's direction v, shape (S, P) (theta_T - theta_0 = eps v).
        teacher_loss_fn: scalar trait loss L_T on (outputs, teacher_targets).
        teacher_inputs: the trait task's inputs, stacked per seed.
        teacher_targets: the trait task's targets, stacked per seed.
        optimizer: ``sgd`` or ``adam``.
        lr: its learning rate.
        steps: T >= 1, the number of steps.
        use_vmap: batch seeds with ``torch.func.vmap`` (else loop).

    Returns:
        dict of (S, T + 1) float64 tensors: ``cos_step_teacher``, ``cos_displacement_teacher``,
        ``teacher_loss``, ``imitation_loss`` (column t = after t steps).

    Raises:
        InputError: ``steps`` not a positive integer, or a bad optimizer or learning rate.

    """
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"trajectory steps must be a positive integer, got {steps!r}")
    stepper = StackedOptimizer(optimizer, lr)

    def imitation_objective(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return loss.value(model(theta, x), y).mean()

    def evaluate(theta: Tensor, x: Tensor, y: Tensor, xt: Tensor, yt: Tensor) -> dict[str, Tensor]:
        gradient, imitation = _gradient_and_value(imitation_objective, theta, x, y)
        teacher = teacher_loss_fn(model(theta, xt), yt)
        return {"gradient": gradient, "imitation": imitation, "teacher": teacher}

    batched = map_over_seeds(evaluate, use_vmap)
    theta = theta_start.detach().clone()
    previous = theta
    records: dict[str, list[Tensor]] = {
        "cos_step_teacher": [],
        "cos_displacement_teacher": [],
        "teacher_loss": [],
        "imitation_loss": [],
    }
    nan = torch.full((theta.shape[0],), math.nan, dtype=torch.float64, device=theta.device)
    for t in range(steps + 1):
        state = batched(theta, inputs, targets, teacher_inputs, teacher_targets)
        records["teacher_loss"].append(state["teacher"].detach().double())
        records["imitation_loss"].append(state["imitation"].detach().double())
        if t == 0:
            records["cos_step_teacher"].append(nan)
            records["cos_displacement_teacher"].append(nan)
        else:
            records["cos_step_teacher"].append(batched_cosine(theta - previous, direction))
            records["cos_displacement_teacher"].append(
                batched_cosine(theta - theta_start, direction)
            )
        if t < steps:
            previous = theta
            theta = stepper.step(theta, state["gradient"].detach())
    return {key: torch.stack(values, dim=1) for key, values in records.items()}


def _gradient_and_value(
    objective: Callable[[Tensor, Tensor, Tensor], Tensor], theta: Tensor, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """(grad_theta objective, objective) in one backward pass (``torch.func.grad`` with aux)."""

    def with_value(t: Tensor) -> tuple[Tensor, Tensor]:
        value = objective(t, x, y)
        return value, value.detach()

    return grad(with_value, has_aux=True)(theta)
