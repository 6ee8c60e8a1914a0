"""Variants of the MNIST student: optimizer, distillation loss, distillation inputs, head splicing.

Pure pieces that ``sublim_theory.studies.mnist.experiment`` composes (issue 12 item 3b, issue 13 items 3
and 4); every default reproduces the paper's student (Adam, KL, uniform noise, own init).

* Optimizers over the stacked ``(M, ...)`` tensors, all elementwise, so one optimizer is M
  independent ones: ``adam`` (torch's Adam, L2 weight decay), ``sgd`` (plain gradient descent,
  L2 weight decay) and ``signsgd`` (theta <- theta - lr * sign(g + wd * theta)).
* Losses per model ``(M,)``: ``kl`` is the engine's KL (``experiment.distillation_loss``);
  ``mse`` is the mean over batch and distilled logits of (z_S - z_T)^2, whose gradient in z_S is
  2 (z_S - z_T) / (B k) for B images and k distilled logits.
* Inputs: ``uniform`` [-1, 1] pixels (the paper), ``gaussian`` N(0, 1) pixels, or ``real``
  training digits (the teacher's own training images), drawn per (model, block) from a seeded
  generator so a block is the same set every epoch.
* Head splicing (Brockers et al., arXiv 2605.23645, argue that compatible heads, not the shared
  init, carry the effect): the head is the last layer's rows, class rows 0..9 and aux rows
  10..10+m-1 (weight and bias). ``randbody_aux`` takes the partner's body with the model's own
  last layer; ``randaux_aux`` the model's own init with the partner's aux rows; ``randclass_aux``
  the model's own init with the partner's class rows. The partner is the derangement's, so every
  part is a genuine draw of the same init distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sublim_theory.engine.optimizers import SignSGD, make_optimizer
from sublim_theory.errors import InputError

__all__ = [
    "DISTILLATION_INPUTS",
    "DISTILLATION_LOSSES",
    "HEAD_KINDS",
    "STUDENT_OPTIMIZERS",
    "SignSGD",
    "draw_inputs",
    "make_student_optimizer",
    "mse_distillation_loss",
    "splice_heads",
]

STUDENT_OPTIMIZERS = ("adam", "sgd", "signsgd")
DISTILLATION_LOSSES = ("kl", "mse")
DISTILLATION_INPUTS = ("uniform", "gaussian", "real")
HEAD_KINDS = ("randbody_aux", "randaux_aux", "randclass_aux")
_CLASS_ROWS = 10


def make_student_optimizer(
    name: str, params: Sequence[Tensor], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The student optimizer ``name`` from ``STUDENT_OPTIMIZERS`` over the stacked tensors.

    Adam is fused (one kernel per step) where torch supports it, as the paper's student.

    Returns:
        The optimizer.

    Raises:
        InputError: for an unknown name.

    """
    if name not in STUDENT_OPTIMIZERS:
        raise InputError(
            f"student_optimizer must be one of {list(STUDENT_OPTIMIZERS)}, got {name!r}"
        )
    return make_optimizer(name, params, lr, weight_decay, fused=True)


def mse_distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean over batch and logits of ``(z_S - z_T)^2``: ``(...)`` from ``(..., B, k)`` logits.

    One value per student (as ``experiment.distillation_loss``), so a sum over students gives
    each student the gradient ``2 (z_S - z_T) / (B k)`` of its own loss.

    Returns:
        The loss per student, shape ``(...)``.

    """
    difference = student_logits - teacher_logits.expand_as(student_logits)
    return difference.square().mean((-2, -1))


def draw_inputs(
    kind: str,
    generator: torch.Generator,
    out: Tensor,
    train_images: Tensor | None = None,
) -> Tensor:
    """Fill ``out`` ``(B, 784)`` with one block of distillation inputs of ``kind``; returns it.

    ``uniform``: U[-1, 1] pixels, drawn as ``2 * rand - 1`` (the paper's noise, bit for bit the
    experiment's historical draw). ``gaussian``: N(0, 1) pixels. ``real``: B distinct training
    digits (``train_images``, on the CPU) chosen by ``generator``.

    Returns:
        ``out``.

    Raises:
        InputError: for an unknown kind, or ``real`` without enough training images.

    """
    if kind == "uniform":
        torch.rand(out.shape, generator=generator, out=out)
        return out.mul_(2).sub_(1)
    if kind == "gaussian":
        return torch.randn(out.shape, generator=generator, out=out)
    if kind == "real":
        if train_images is None or len(train_images) < out.shape[0]:
            available = 0 if train_images is None else len(train_images)
            raise InputError(
                f"distillation_inputs = 'real' needs at least batch_size = {out.shape[0]} "
                f"training digits, got {available}; lower batch_size"
            )
        index = torch.randperm(len(train_images), generator=generator)[: out.shape[0]]
        return out.copy_(train_images[index])
    raise InputError(
        f"distillation_inputs must be one of {list(DISTILLATION_INPUTS)}, got {kind!r}"
    )


def splice_heads(own: Sequence[Tensor], partner: Sequence[Tensor], kind: str) -> list[Tensor]:
    """One model's student init for a head-compatibility ``kind`` (``HEAD_KINDS``).

    Args:
        own: this model's init ``[W1, b1, ..., W_out, b_out]`` (no model axis).
        partner: the derangement partner's init, same shapes.
        kind: ``randbody_aux`` (partner's body, own last layer), ``randaux_aux`` (own init,
            partner's aux rows 10.. of ``W_out`` and ``b_out``) or ``randclass_aux`` (own init,
            partner's class rows 0..9).

    Returns:
        New tensors (the inputs are not modified).

    Raises:
        InputError: for an unknown kind.

    """
    if kind == "randbody_aux":
        return [p.clone() for p in partner[:-2]] + [p.clone() for p in own[-2:]]
    if kind not in ("randaux_aux", "randclass_aux"):
        raise InputError(f"head kind must be one of {list(HEAD_KINDS)}, got {kind!r}")
    rows = slice(_CLASS_ROWS, None) if kind == "randaux_aux" else slice(0, _CLASS_ROWS)
    spliced = [p.clone() for p in own]
    for index in (-2, -1):
        spliced[index][rows] = partner[index][rows]
    return spliced
