"""The list of derivations in the document's order.

The general lemma, the losses, the corollary, the second-order coefficient, the init-distance law,
then the concrete network.
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
from sublim_theory.symbolic.steps import Derivation

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
