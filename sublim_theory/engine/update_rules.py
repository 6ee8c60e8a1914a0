"""Update rules as small pure objects: ``(gradient, parameters, state) -> (step, new state)``.

theory/optimizers.md derives what each rule does to the alignment theorem. A rule acts on flat
parameter vectors; ``step`` is the parameter change, so one update is
``parameters + step``. Every rule is a pure tensor function (no in-place ops, no data-dependent
Python branches), so it composes with ``torch.func`` (``vmap`` over stacked seeds, ``grad``
through a step). ``state`` is a dict of tensors (a pytree); ``rule.init(parameters)`` is the
fresh state, and any state a previous call returned can be passed back in.

Rules (``torch.optim``'s conventions; ``g`` the gradient, ``theta`` the parameters, ``alpha``
the learning rate, ``t`` the step count after this step):

* ``sgd``: ``step = -alpha (g + lambda theta)`` (``weight_decay`` lambda is L2, added to g);
* ``momentum``: ``d = g + lambda theta``; ``b_1 = d``, ``b_t = mu b_{t-1} + (1 - tau) d``;
  ``step = -alpha b_t`` (heavy ball) or ``-alpha (d + mu b_t)`` (Nesterov);
* ``adam``: ``d = g + lambda theta``; ``m_t = beta1 m + (1 - beta1) d``,
  ``v_t = beta2 v + (1 - beta2) d^2``; ``step = -alpha m_hat / (sqrt(v_hat) + eps_a)`` with
  ``m_hat = m_t / (1 - beta1^t)``, ``v_hat = v_t / (1 - beta2^t)``;
* ``adamw``: Adam on ``g`` itself, plus the decoupled decay: ``step = -alpha lambda theta -
  alpha m_hat / (sqrt(v_hat) + eps_a)``;
* ``signsgd``: ``step = -alpha sign(g)`` (by hand: torch.optim has no SignSGD);
* ``preconditioned``: ``step = -alpha P g`` for a fixed matrix ``P`` (or its diagonal).

First-order predictions (``rule.first_order_step(kv, eps, parameters)``): at the shared init
the student's gradient is ``g = -eps K v + O(eps^2)`` (Lemma 1), so the first step from fresh
state is predicted as

* ``sgd``, ``momentum``: ``alpha eps K v`` (Nesterov: ``alpha (1 + mu) eps K v``), minus
  ``alpha lambda theta`` (times ``1 + mu`` for Nesterov) with weight decay; residual O(eps^2);
* ``preconditioned``: ``alpha eps P K v``; residual O(eps^2);
* ``signsgd``: ``alpha sign(K v)``: scale-free in eps, a statement about the direction; each
  coordinate with ``(K v)_i != 0`` has the predicted sign for all small enough eps;
* ``adam`` (fresh): ``alpha eps k / (eps |k| + eps_a)`` per coordinate, ``k = K v`` (with
  weight decay, Adam's map applied to ``-eps K v + lambda theta``). Where ``eps |k_i| >> eps_a``
  this is the sign step ``alpha sign(k_i)``; where ``eps |k_i| << eps_a`` it is linear in eps,
  ``alpha eps k_i / eps_a``: a diagonal preconditioner ``1 / (|g_i| + eps_a)``. The boundary is
  ``eps |k_i| = eps_a``;
* ``adamw`` (fresh): the Adam prediction minus ``alpha lambda theta``; the decay term does not
  depend on the teacher and dilutes ``cos(step, K v)`` (theory/optimizers.md).

The predictions take ``K v`` from :func:`sublim_theory.engine.alignment.gauss_newton_product`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sublim_theory.errors import InputError

State = dict[str, Tensor]


def _check_vectors(gradient: Tensor, parameters: Tensor) -> None:
    if gradient.dim() != 1 or parameters.dim() != 1:
        raise InputError(
            f"update rules act on flat vectors; got gradient of shape {tuple(gradient.shape)} and "
            f"parameters of shape {tuple(parameters.shape)}: flatten them (FunctionalModel.flatten)"
        )
    if gradient.shape != parameters.shape:
        raise InputError(
            f"gradient has {gradient.numel()} entries but parameters have {parameters.numel()}; "
            "pass the gradient of these parameters"
        )


def _nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a finite number > 0, got {value}")
    return value


def _unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not 0 <= value < 1:
        raise InputError(f"{name} must lie in [0, 1), got {value}")
    return value


@dataclass(frozen=True)
class UpdateRule:
    """Base class: ``rule(gradient, parameters, state) -> (step, new_state)``.

    Attributes:
        lr: the learning rate alpha (> 0).

    """

    lr: float
    name: str = field(default="rule", init=False)

    def __post_init__(self) -> None:
        """Refuse a learning rate that is not a finite number > 0."""
        _positive("the learning rate", self.lr)

    def init(self, parameters: Tensor) -> State:
        """The fresh state for ``parameters`` (empty for stateless rules)."""
        return {}

    def __call__(self, gradient: Tensor, parameters: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: the parameter change and the new state.

        Returns:
            ``(delta theta, the new state)``.

        Raises:
            InputError: if ``gradient`` and ``parameters`` are not flat vectors of one size.

        """
        _check_vectors(gradient, parameters)
        return self._step(gradient, parameters, state)

    def _step(self, gradient: Tensor, parameters: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def first_order_step(self, kv: Tensor, eps: float, parameters: Tensor) -> Tensor:
        """The first step from fresh state predicted from ``K v`` (module docstring).

        Returns:
            The predicted step, a flat tensor like ``kv``.

        Raises:
            InputError: if ``kv`` and ``parameters`` are not flat vectors of one size.

        """
        _check_vectors(kv, parameters)
        return self._prediction(kv, float(eps), parameters)

    def _prediction(self, kv: Tensor, eps: float, parameters: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(UpdateRule):
    """``step = -alpha (g + lambda theta)``; prediction ``alpha eps K v - alpha lambda theta``."""

    weight_decay: float = 0.0
    name: str = field(default="sgd", init=False)

    def __post_init__(self) -> None:
        """Refuse a negative weight decay."""
        super().__post_init__()
        _nonnegative("weight_decay", self.weight_decay)

    def _step(self, gradient: Tensor, parameters: Tensor, state: State) -> tuple[Tensor, State]:
        return -self.lr * (gradient + self.weight_decay * parameters), state

    def _prediction(self, kv: Tensor, eps: float, parameters: Tensor) -> Tensor:
        return self.lr * (eps * kv - self.weight_decay * parameters)


@dataclass(frozen=True)
class Momentum(UpdateRule):
    """torch.optim.SGD with momentum: the first step is the gradient step (Nesterov: times 1 + mu)."""

    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    name: str = field(default="momentum", init=False)

    def __post_init__(self) -> None:
        """Refuse a momentum or dampening outside [0, 1), a negative weight decay, bad Nesterov."""
        super().__post_init__()
        _unit_interval("momentum", self.momentum)
        _unit_interval("dampening", self.dampening)
        _nonnegative("weight_decay", self.weight_decay)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise InputError("Nesterov momentum needs momentum > 0 and dampening = 0")

    def init(self, parameters: Tensor) -> State:
        """Zero buffer and step count 0."""
        return {"buffer": torch.zeros_like(parameters), "step": parameters.new_zeros(())}

    def _step(self, gradient: Tensor, parameters: Tensor, state: State) -> tuple[Tensor, State]:
        direction = gradient + self.weight_decay * parameters
        running = self.momentum * state["buffer"] + (1 - self.dampening) * direction
        # torch starts the buffer at the first direction itself (no dampening on step one)
        buffer = torch.where(state["step"] == 0, direction, running)
        applied = direction + self.momentum * buffer if self.nesterov else buffer
        return -self.lr * applied, {"buffer": buffer, "step": state["step"] + 1}

    def _prediction(self, kv: Tensor, eps: float, parameters: Tensor) -> Tensor:
        factor = 1 + self.momentum if self.nesterov else 1.0
        return factor * self.lr * (eps * kv - self.weight_decay * parameters)


@dataclass(frozen=True)
class Adam(UpdateRule):
    """torch.optim.Adam (``decoupled=False``, L2 weight decay) or AdamW (``decoupled=True``)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False
    name: str = field(default="adam", init=False)

    def __post_init__(self) -> None:
        """Refuse betas outside [0, 1), a negative eps or a negative weight decay."""
        super().__post_init__()
        _unit_interval("beta1", self.beta1)
        _unit_interval("beta2", self.beta2)
        _nonnegative("Adam's eps", self.eps)
        _nonnegative("weight_decay", self.weight_decay)
        object.__setattr__(self, "name", "adamw" if self.decoupled else "adam")

    def init(self, parameters: Tensor) -> State:
        """Zero moments and step count 0 (float64: see ``_adam_direction``)."""
        zeros = torch.zeros_like(parameters)
        step = parameters.new_zeros((), dtype=torch.float64)
        return {"exp_avg": zeros, "exp_avg_sq": zeros, "step": step}

    def _adam_direction(self, direction: Tensor, state: State) -> tuple[Tensor, State]:
        step_count = state["step"] + 1
        exp_avg = self.beta1 * state["exp_avg"] + (1 - self.beta1) * direction
        exp_avg_sq = self.beta2 * state["exp_avg_sq"] + (1 - self.beta2) * direction * direction
        # the bias corrections in float64, as torch.optim.Adam computes them (Python floats): in
        # float32, 1 - 0.999^t loses about 4 of its 7 digits at t = 1
        step_count = step_count.double()
        corrected_avg = exp_avg / (1 - self.beta1**step_count).to(exp_avg.dtype)
        corrected_sq = exp_avg_sq / (1 - self.beta2**step_count).to(exp_avg.dtype)
        step = -self.lr * corrected_avg / (corrected_sq.sqrt() + self.eps)
        return step, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "step": step_count}

    def _step(self, gradient: Tensor, parameters: Tensor, state: State) -> tuple[Tensor, State]:
        if self.decoupled:
            step, new_state = self._adam_direction(gradient, state)
            return step - self.lr * self.weight_decay * parameters, new_state
        return self._adam_direction(gradient + self.weight_decay * parameters, state)

    def _prediction(self, kv: Tensor, eps: float, parameters: Tensor) -> Tensor:
        if self.decoupled:
            # alpha eps k / (eps |k| + eps_a): the sign step alpha sign(k) where eps |k| >> eps_a
            return self.lr * eps * kv / (eps * kv.abs() + self.eps) - (
                self.lr * self.weight_decay * parameters
            )
        direction = -eps * kv + self.weight_decay * parameters
        return -self.lr * direction / (direction.abs() + self.eps)


@dataclass(frozen=True)
class SignSGD(UpdateRule):
    """``step = -alpha sign(g)``; prediction ``alpha sign(K v)`` (scale-free in eps)."""

    name: str = field(default="signsgd", init=False)

    def _step(self, gradient: Tensor, parameters: Tensor, state: State) -> tuple[Tensor, State]:
        return -self.lr * torch.sign(gradient), state

    def _prediction(self, kv: Tensor, eps: float, parameters: Tensor) -> Tensor:
        if not eps > 0:
            raise InputError(f"the sign-step prediction needs eps > 0, got {eps}")
        return self.lr * torch.sign(kv)


@dataclass(frozen=True, eq=False)  # a tensor field: compare rules by identity
class Preconditioned(UpdateRule):
    """``step = -alpha P g`` for a fixed ``P`` (a matrix, or a vector holding its diagonal)."""

    preconditioner: Tensor | None = None
    name: str = field(default="preconditioned", init=False)

    def __post_init__(self) -> None:
        """Refuse a missing preconditioner or one that is neither (p, p) nor (p,)."""
        super().__post_init__()
        if self.preconditioner is None or self.preconditioner.dim() not in (1, 2):
            raise InputError(
                "preconditioned needs preconditioner=P, a (p, p) matrix or a (p,) diagonal"
            )

    def _apply(self, vector: Tensor) -> Tensor:
        matrix = self.preconditioner
        size = vector.shape[0]
        if matrix.shape not in ((size,), (size, size)):
            raise InputError(
                f"the preconditioner has shape {tuple(matrix.shape)} but the vectors have {size} "
                f"entries; pass a ({size}, {size}) matrix or a ({size},) diagonal"
            )
        return matrix * vector if matrix.dim() == 1 else matrix @ vector

    def _step(self, gradient: Tensor, parameters: Tensor, state: State) -> tuple[Tensor, State]:
        return -self.lr * self._apply(gradient), state

    def _prediction(self, kv: Tensor, eps: float, parameters: Tensor) -> Tensor:
        return self.lr * eps * self._apply(kv)


RULES: dict[str, Callable[..., UpdateRule]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adam": Adam,
    "adamw": lambda lr, **options: Adam(lr, **{"weight_decay": 0.01, **options}, decoupled=True),
    "signsgd": SignSGD,
    "preconditioned": Preconditioned,
}


def make_rule(name: str, lr: float, **options: object) -> UpdateRule:
    """Build an update rule by name (a key of ``RULES``).

    Options are the rule's fields (``momentum``, ``beta1``, ``eps``, ``weight_decay``, ...);
    ``adamw`` defaults to ``weight_decay=0.01`` like torch.optim.AdamW.

    Returns:
        The rule.

    Raises:
        InputError: for an unknown name, an option the rule does not take, or a bad value.

    """
    if name not in RULES:
        raise InputError(f"unknown update rule '{name}'; choose one of {sorted(RULES)}")
    if name == "adamw" and "decoupled" in options:
        raise InputError("adamw is Adam with decoupled=True; do not pass decoupled")
    try:
        return RULES[name](lr, **options)
    except TypeError as error:
        raise InputError(f"update rule '{name}' does not take these options: {error}") from error


def warmed_state(
    rule: UpdateRule, parameters: Tensor, gradients: list[Tensor] | tuple[Tensor, ...]
) -> State:
    """The rule's state after one step on each of ``gradients`` at FIXED ``parameters``.

    A state a run would carry in (moments of earlier, unrelated gradients) while the parameters
    stay where the theorem looks (theta_S0): the "warmed" Adam of the one-step sweep.

    Returns:
        The state after the last gradient.

    Raises:
        InputError: a gradient that is not a flat vector of the parameters' size.

    """
    state = rule.init(parameters)
    for gradient in gradients:
        _, state = rule(gradient, parameters, state)
    return state


__all__ = [
    "RULES",
    "SGD",
    "Adam",
    "Momentum",
    "Preconditioned",
    "SignSGD",
    "State",
    "UpdateRule",
    "make_rule",
    "warmed_state",
]
