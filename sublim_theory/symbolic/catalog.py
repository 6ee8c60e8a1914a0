"""The lists of derivations in each document's order.

Alignment document: the general lemma, the losses, the corollary, the second-order coefficient,
the init-distance law, then the concrete network. Optimizers document (theory/optimizers.md):
preconditioned steps, sign steps (Adam, SignSGD, momentum), AdamW's decay, LoRA.
"""

from __future__ import annotations

from collections.abc import Callable

from sublim_theory.symbolic.general import corollary, init_distance, lemma, second_order
from sublim_theory.symbolic.losses import (
    kl_derivation,
    soft_cross_entropy_derivation,
    squared_error_derivation,
    subset_derivation,
)
from sublim_theory.symbolic.network import concrete_network
from sublim_theory.symbolic.optimizers import decoupled_decay, lora, preconditioned, sign_steps
from sublim_theory.symbolic.steps import Derivation

__all__ = [
    "DERIVATIONS",
    "OPTIMIZER_DERIVATIONS",
    "build_all",
    "build_optimizers",
]

DERIVATIONS: tuple[Callable[[], Derivation], ...] = (
    lemma,
    squared_error_derivation,
    soft_cross_entropy_derivation,
    kl_derivation,
    subset_derivation,
    corollary,
    second_order,
    init_distance,
    concrete_network,
)


def build_all() -> list[Derivation]:
    """Build (and so check) every derivation, in the document's order."""
    return [build() for build in DERIVATIONS]


OPTIMIZER_DERIVATIONS: tuple[Callable[[], Derivation], ...] = (
    preconditioned,
    sign_steps,
    decoupled_decay,
    lora,
)


def build_optimizers() -> list[Derivation]:
    """Build (and so check) every derivation of the optimizers document, in its order."""
    return [build() for build in OPTIMIZER_DERIVATIONS]
