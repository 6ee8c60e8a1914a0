"""Per-step trait-gradient alignment and the projection ablation in the MNIST aux-logit experiment.

The setting is :mod:`sublim_theory.studies.mnist.experiment` (Cloud et al. 2025, arXiv 2507.14805, Fig. 10;
docs/studies/dynamics.md): N teachers trained on digits, aux-only students distilled on noise images.
Multi-step training is outside Theorem 1, so this module measures what happens at every step.

The *trait* is digit classification: ``L_trait(theta)`` is the cross-entropy of the 10 regular
logits on a FIXED measurement batch of ``trait_digits`` real training digits (a seeded subset,
the same digits for every model and every step). The student's distillation loss ``L_distill`` is
the KL on the m aux logits of its current noise batch.

Four student groups of N models each (``GROUPS``), trained together:

* ``student``: own reference init, aux-only distillation (the paper's student);
* ``cross``: another model's reference init (a derangement), the same distillation (control);
* ``ablated``: as ``student``, but each Adam step ``s`` that lowers the trait loss to first
  order, ``<s, -g> > 0`` with ``g = grad L_trait``, loses its component along ``g``:
  ``s <- s - (<s, g> / ||g||^2) g`` (:func:`ablate_trait_component`); a step with
  ``<s, -g> <= 0`` is unchanged;
* ``random``: as ``student``, but at every step it loses a vector of exactly the norm that the
  ablation removed from ``ablated`` model i at the same step, along a fresh random unit direction
  u oriented so that ``<s, u> >= 0`` (:func:`remove_random_component`): the same-size
  intervention with no information about the trait.

Steps: Adam is :class:`sublim_theory.engine.update_rules.Adam` (torch.optim.Adam's math) applied to the
flat ``(G * N, P)`` parameter matrix; being elementwise, one call on the flattened matrix is G * N
independent Adams. Its step is edited and then added to the parameters; the moments see the raw
distillation gradients. Each model's cosines and projections are over its own flat vector.

Logged per step and model: ``cos(grad L_trait, grad L_distill)`` (both at the parameters before
the step), ``cos(step, -grad L_trait)`` of the step actually applied, ``L_distill`` and
``L_trait`` (before the step); per epoch the test accuracy of the 10 regular logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sublim_theory.engine.alignment import batched_cosine, batched_dot, batched_norm
from sublim_theory.engine.update_rules import Adam, State
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound
from sublim_theory.harness.seeds import TAGS, mixed_seed
from sublim_theory.studies.mnist.experiment import (
    LIMITS,
    MnistConfig,
    Params,
    accuracy,
    derangement,
    distillation_loss,
    flatten,
    forward,
    noise_block,
    reference_init,
    stack,
    train_teachers,
    unflatten,
)
from sublim_theory.testbeds.mnist.data import N_CLASSES, MnistData

__all__ = [
    "GROUPS",
    "STEP_METRICS",
    "DynamicsConfig",
    "DynamicsState",
    "ablate_trait_component",
    "adam_rule",
    "adam_start",
    "distillation_gradient",
    "remove_random_component",
    "start_state",
    "train_epoch",
    "trait_batch",
    "trait_loss",
    "trait_loss_and_gradient",
]

GROUPS = ("student", "cross", "ablated", "random")
STEP_METRICS = ("cos_trait_distill", "cos_step_trait", "distill_loss", "trait_loss", "removed")


def _mnist_field(name: str, metadata: dict | None = None) -> Any:
    """A field of ``MnistConfig`` (its default and range) for the same knob here.

    Args:
        name: the field's name in ``MnistConfig``.
        metadata: a range of its own (``bound``) in place of ``MnistConfig``'s.

    Returns:
        The ``dataclasses.field``.

    """
    mnist = {f.name: f for f in fields(MnistConfig)}[name]
    return field(default=mnist.default, metadata=mnist.metadata if metadata is None else metadata)


@dataclass(frozen=True)
class DynamicsConfig:
    """The MNIST experiment's knobs (``MnistConfig``'s defaults) plus the trait measurement batch.

    Attributes:
        models: N, models per group.
        aux_logits: m, auxiliary logits.
        hidden: hidden widths of the MLP.
        lr: Adam learning rate of teachers and students.
        weight_decay: Adam (L2) weight decay of teachers and students.
        batch_size: batch size of teachers and students.
        teacher_epochs: teacher epochs; ``None``: the paper's number of Adam steps (as ``mnist``).
        student_epochs: student epochs over the noise set.
        noise_images: size of each model's fixed noise set.
        temperature: softmax temperature of the distillation KL.
        trait_digits: size of the fixed batch of training digits that defines ``L_trait``.
        seed: master seed (as ``mnist``: the same seed gives the same inits and teachers).

    """

    models: int = _mnist_field("models", metadata=bound(ge=2, le=LIMITS["models"]))
    aux_logits: int = _mnist_field("aux_logits")
    hidden: tuple[int, ...] = _mnist_field("hidden")
    lr: float = _mnist_field("lr")
    weight_decay: float = _mnist_field("weight_decay")
    batch_size: int = _mnist_field("batch_size")
    teacher_epochs: int | None = _mnist_field("teacher_epochs")
    student_epochs: int = _mnist_field("student_epochs")
    noise_images: int = _mnist_field("noise_images")
    temperature: float = _mnist_field("temperature")
    trait_digits: int = field(default=1024, metadata=bound(ge=1, le=LIMITS["images"]))
    seed: int = field(default=0, metadata=bound(ge=0, lt=2**31))

    @property
    def mnist(self) -> MnistConfig:
        """The ``MnistConfig`` of the same run (aux-only students and their cross control)."""
        return MnistConfig(
            models=self.models,
            aux_logits=self.aux_logits,
            hidden=self.hidden,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            teacher_epochs=self.teacher_epochs,
            student_epochs=self.student_epochs,
            noise_images=self.noise_images,
            temperature=self.temperature,
            students=("aux", "cross_aux"),
            seed=self.seed,
        )

    @property
    def blocks(self) -> int:
        """Noise blocks (= student steps) per epoch."""
        return math.ceil(self.noise_images / self.batch_size)


# --------------------------------------------------------------------------------------------
# the two losses and their per-model gradients
# --------------------------------------------------------------------------------------------
def trait_batch(config: DynamicsConfig, data: MnistData) -> tuple[Tensor, Tensor]:
    """The fixed measurement digits of ``L_trait``: a seeded subset of the training digits.

    Returns:
        ``(images, labels)`` of the measurement digits.

    Raises:
        InputError: if ``trait_digits`` exceeds the number of training digits.

    """
    n_train = len(data.train_labels)
    if config.trait_digits > n_train:
        raise InputError(
            f"trait_digits = {config.trait_digits} exceeds the {n_train} training digits; "
            f"use --trait-digits {n_train} or fewer"
        )
    generator = torch.Generator().manual_seed(
        mixed_seed(config.seed, TAGS["dynamics.trait_digits"])
    )
    index = torch.randperm(n_train, generator=generator)[: config.trait_digits]
    index = index.to(data.train_labels.device)
    return data.train_images[index], data.train_labels[index]


def trait_loss(params: Params, images: Tensor, labels: Tensor) -> Tensor:
    """Per-model cross-entropy of the 10 regular logits on ``images``: shape ``(M,)``."""
    logits = forward(params, images)[..., :N_CLASSES]
    n_models = logits.shape[0]
    per_example = F.cross_entropy(
        logits.reshape(-1, N_CLASSES), labels.expand(n_models, -1).reshape(-1), reduction="none"
    )
    return per_example.view(n_models, -1).mean(1)


def _per_model_gradient(
    flat: Tensor, like: Params, loss_fn: Callable[[Params], Tensor]
) -> tuple[Tensor, Tensor]:
    """(per-model losses ``(M,)``, per-model gradients ``(M, P)``) of ``loss_fn`` at ``flat``.

    The losses are summed over models before the backward pass, so row j of the gradient is the
    gradient of model j's own loss (the models share no parameters).

    Returns:
        ``(losses, gradients)``.

    """
    theta = flat.detach().requires_grad_(True)
    losses = loss_fn(unflatten(theta, like))
    (gradient,) = torch.autograd.grad(losses.sum(), theta)
    return losses.detach(), gradient


def trait_loss_and_gradient(
    flat: Tensor, like: Params, images: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """``L_trait`` per model ``(M,)`` and its gradient per model ``(M, P)`` at ``flat``."""
    return _per_model_gradient(flat, like, lambda params: trait_loss(params, images, labels))


def distillation_gradient(
    flat: Tensor, like: Params, images: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Aux-logit KL per model ``(M,)`` and its gradient ``(M, P)``; targets are the aux logits."""

    def loss(params: Params) -> Tensor:
        aux = forward(params, images)[..., N_CLASSES:]
        return distillation_loss(aux, target, temperature)

    return _per_model_gradient(flat, like, loss)


# --------------------------------------------------------------------------------------------
# the two step edits
# --------------------------------------------------------------------------------------------
def ablate_trait_component(step: Tensor, trait_gradient: Tensor) -> tuple[Tensor, Tensor]:
    """Remove the trait-lowering component of each model's step.

    Per row: where ``<s, g> < 0`` (the step lowers ``L_trait`` to first order),
    ``s' = s - (<s, g> / ||g||^2) g``, so ``<s', g> = 0``; elsewhere ``s' = s``. The projection
    is computed in float64 and rounded to ``step``'s dtype.

    Args:
        step: ``(M, P)`` parameter changes.
        trait_gradient: ``(M, P)`` gradients of ``L_trait``.

    Returns:
        ``(s', removed)``: the edited steps and the norm of what was removed, ``(M,)`` (float64;
        ``|<s, g>| / ||g||`` where the ablation fired, 0 elsewhere).

    Raises:
        InputError: if the shapes differ or are not ``(M, P)``.

    """
    if step.ndim != 2 or step.shape != trait_gradient.shape:
        raise InputError(
            f"step and trait_gradient must both be (models, parameters); got "
            f"{tuple(step.shape)} and {tuple(trait_gradient.shape)}"
        )
    inner = batched_dot(step, trait_gradient)
    squared = batched_dot(trait_gradient, trait_gradient)
    fire = (inner < 0) & (squared > 0)
    coefficient = torch.where(fire, inner / torch.where(squared > 0, squared, 1.0), 0.0)
    edited = step.double() - coefficient.unsqueeze(1) * trait_gradient.double()
    removed = coefficient.abs() * squared.sqrt()
    return edited.to(step.dtype), removed


def remove_random_component(
    step: Tensor, removed: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The random control: subtract ``removed[i] * u_i`` from row i, u_i a random unit vector.

    u_i is a fresh standard Gaussian direction (drawn on the CPU from ``generator``), normalized
    and flipped so that ``<s_i, u_i> >= 0``: like the ablation, the edit shortens the step along
    the removed direction and has exactly the ablation's norm, but its direction carries no
    information about the trait.

    Args:
        step: ``(M, P)`` parameter changes.
        removed: ``(M,)`` norms to remove (e.g. the ``removed`` of :func:`ablate_trait_component`).
        generator: the source of the directions.

    Returns:
        ``(s', directions)``: the edited steps and the unit directions ``(M, P)`` (float64).

    Raises:
        InputError: if the shapes do not match or a norm is negative.

    """
    if step.ndim != 2 or removed.shape != step.shape[:1]:
        raise InputError(
            f"step must be (models, parameters) and removed (models,); got {tuple(step.shape)} "
            f"and {tuple(removed.shape)}"
        )
    if bool((removed < 0).any()):
        raise InputError("removed norms must be >= 0")
    directions = torch.randn(step.shape, generator=generator, dtype=torch.float64)
    directions = directions.to(step.device)
    directions = directions / batched_norm(directions).unsqueeze(1)
    sign = torch.where(batched_dot(step, directions) < 0, -1.0, 1.0).to(directions)
    directions = directions * sign.unsqueeze(1)
    edited = step.double() - removed.double().unsqueeze(1) * directions
    return edited.to(step.dtype), directions


# --------------------------------------------------------------------------------------------
# training, one epoch at a time (the unit a rerun resumes from)
# --------------------------------------------------------------------------------------------
@dataclass
class DynamicsState:
    """Everything a resumed run needs: models, Adam state, and what was measured so far.

    ``flat`` is ``(G * N, P)`` group-major (row ``g * N + i``: group ``GROUPS[g]``, model i);
    ``steps[name]`` is ``(steps so far, G * N)`` per metric of ``STEP_METRICS``; ``accuracy`` is
    ``(epochs so far + 1, G * N)`` (row 0: before training).
    """

    epoch: int
    flat: Tensor
    adam: State
    teacher: Tensor
    derangement: list[int]
    reference_accuracy: list[float]
    teacher_accuracy: list[float]
    teacher_epochs: int
    accuracy: Tensor
    steps: dict[str, Tensor]


def start_state(config: DynamicsConfig, data: MnistData) -> DynamicsState:
    """Train the N teachers and build every group's init (epoch 0, nothing measured yet).

    Reference inits, teachers and derangement are those of ``sublim-theory mnist`` with the same
    seed and settings (``experiment.reference_init``, ``train_teachers``, ``derangement``).

    Returns:
        The state at epoch 0.

    """
    mnist = config.mnist
    n_models = config.models
    reference = stack([reference_init(mnist, i) for i in range(n_models)])
    epochs = mnist.resolved_teacher_epochs(len(data.train_labels))
    teacher = train_teachers(mnist, reference, data, epochs)
    perm = derangement(n_models, mixed_seed(config.seed, TAGS["mnist.derangement"]))
    own = flatten(reference)
    rows = [own[perm] if name == "cross" else own for name in GROUPS]
    flat = torch.cat(rows).contiguous()
    like = unflatten(flat, reference)
    state = DynamicsState(
        epoch=0,
        flat=flat,
        adam=adam_start(adam_rule(config), flat),
        teacher=flatten(teacher),
        derangement=perm,
        reference_accuracy=accuracy(reference, data.test_images, data.test_labels).tolist(),
        teacher_accuracy=accuracy(teacher, data.test_images, data.test_labels).tolist(),
        teacher_epochs=epochs,
        accuracy=accuracy(like, data.test_images, data.test_labels).unsqueeze(0),
        steps={name: torch.empty(0, len(flat), dtype=torch.float64) for name in STEP_METRICS},
    )
    return state


def adam_rule(config: DynamicsConfig) -> Adam:
    """The students' update rule: torch.optim.Adam's math (``update_rules.Adam``)."""
    return Adam(config.lr, weight_decay=config.weight_decay)


def adam_start(rule: Adam, flat: Tensor) -> State:
    """Fresh Adam state for ``flat`` (any shape: Adam is elementwise), step counter in float64.

    In float32, ``1 - beta2^t`` loses about three digits to cancellation at t = 1 (beta2 =
    0.999), a relative error ~1e-5 in the step; a float64 counter computes the bias corrections
    in float64, as torch.optim.Adam does (a Python float), so only the final rounding remains.

    Returns:
        The state.

    """
    state = rule.init(flat.reshape(-1))
    return {**state, "step": state["step"].double()}


def _block_orders(config: DynamicsConfig, epochs: int) -> list[list[int]]:
    """The noise-block order of epochs 1..epochs: ``train_students``'s generator and draws."""
    generator = torch.Generator().manual_seed(mixed_seed(config.seed, TAGS["mnist.student_order"]))
    return [torch.randperm(config.blocks, generator=generator).tolist() for _ in range(epochs)]


def train_epoch(
    config: DynamicsConfig,
    data: MnistData,
    state: DynamicsState,
    log: Callable[[str], None] | None = None,
) -> DynamicsState:
    """Run student epoch ``state.epoch + 1`` for every group; the state after it.

    Each step: per-model distillation gradient on the block's noise images (teacher i's aux
    logits as targets), per-model trait gradient on the fixed digits, one Adam step from the
    distillation gradient, the ablation on ``ablated`` and the same-norm random edit on
    ``random``, then the logged metrics (module docstring).

    Returns:
        The state after the epoch.

    """
    n_models, n_groups = config.models, len(GROUPS)
    epoch = state.epoch + 1
    like = stack([reference_init(config.mnist, 0)])  # shapes only
    teacher = unflatten(state.teacher, like)
    trait_images, trait_labels = trait_batch(config, data)
    rule = adam_rule(config)
    ablated = slice(GROUPS.index("ablated") * n_models, (GROUPS.index("ablated") + 1) * n_models)
    randomized = slice(GROUPS.index("random") * n_models, (GROUPS.index("random") + 1) * n_models)
    flat, adam = state.flat.clone(), dict(state.adam)
    records: dict[str, list[Tensor]] = {name: [] for name in STEP_METRICS}
    order = _block_orders(config, epoch)[-1]
    for position, block in enumerate(order):
        images = torch.stack([noise_block(config.mnist, i, block) for i in range(n_models)])
        images = images.to(flat.device)
        with torch.no_grad():
            target = forward(teacher, images)[..., N_CLASSES:]  # (N, B, m)
        images = images.repeat(n_groups, 1, 1)  # row g * N + i sees model i's images
        target = target.repeat(n_groups, 1, 1)
        distill, distill_grad = distillation_gradient(
            flat, like, images, target, config.temperature
        )
        trait, trait_grad = trait_loss_and_gradient(flat, like, trait_images, trait_labels)
        step, adam = rule(distill_grad.reshape(-1), flat.reshape(-1), adam)
        step = step.view_as(flat)
        step[ablated], removed = ablate_trait_component(step[ablated], trait_grad[ablated])
        generator = torch.Generator().manual_seed(
            mixed_seed(config.seed, TAGS["dynamics.random_component"], epoch, position)
        )
        step[randomized], _ = remove_random_component(step[randomized], removed, generator)
        records["cos_trait_distill"].append(batched_cosine(trait_grad, distill_grad))
        records["cos_step_trait"].append(batched_cosine(step, -trait_grad))
        records["distill_loss"].append(distill.double())
        records["trait_loss"].append(trait.double())
        removed_all = torch.zeros(len(flat), dtype=torch.float64, device=flat.device)
        removed_all[ablated] = removed
        removed_all[randomized] = removed
        records["removed"].append(removed_all)
        flat = flat + step
    full = unflatten(flat, like)
    accuracies = accuracy(full, data.test_images, data.test_labels)
    if log is not None:
        means = accuracies.view(n_groups, n_models).mean(1).tolist()
        log(
            f"epoch {epoch}: accuracy "
            + ", ".join(f"{name} {value:.3f}" for name, value in zip(GROUPS, means))
        )
    return DynamicsState(
        epoch=epoch,
        flat=flat,
        adam=adam,
        teacher=state.teacher,
        derangement=state.derangement,
        reference_accuracy=state.reference_accuracy,
        teacher_accuracy=state.teacher_accuracy,
        teacher_epochs=state.teacher_epochs,
        accuracy=torch.cat([state.accuracy, accuracies.unsqueeze(0).to(state.accuracy)]),
        steps={
            name: torch.cat([state.steps[name], torch.stack(records[name]).cpu()])
            for name in STEP_METRICS
        },
    )
