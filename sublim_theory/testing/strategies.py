"""Hypothesis strategies that draw whole alignment problems (needs the ``test`` extra).

``alignment_cases()`` draws an architecture, width, depth, activation, output count, imitation
loss, output subset, input distribution, seeds and a teacher direction (a real teacher gradient
or a random direction), and builds the model in float64. Use it with
``sublim_theory.testing.asserts.assert_alignment_bound`` to property-test the theorem; pass your own
``build`` callable to draw cases for your own architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

from sublim_theory.engine.alignment import TeacherTask
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import LOSSES, ImitationLoss, make_loss
from sublim_theory.models.architectures import ACTIVATIONS, ARCHITECTURES, build_model, make_inputs

__all__ = [
    "AlignmentCase",
    "alignment_cases",
]


@dataclass
class AlignmentCase:
    """A drawn problem: model, shared init, teacher direction v, distillation inputs, loss."""

    description: str
    model: FunctionalModel
    theta0: Tensor
    direction: Tensor
    inputs: Tensor
    loss: ImitationLoss


@st.composite
def alignment_cases(
    draw: st.DrawFn,
    architectures: tuple[str, ...] = ARCHITECTURES,
    losses: tuple[str, ...] = tuple(sorted(LOSSES)),
    build: Callable[[str, int, dict], nn.Module] | None = None,
) -> AlignmentCase:
    """Draw an :class:`AlignmentCase` (float64, small sizes so each draw runs in milliseconds)."""
    arch = draw(st.sampled_from(architectures))
    sizes = {"width": draw(st.integers(2, 8)), "depth": draw(st.integers(1, 3))}
    if arch != "transformer":
        sizes["activation"] = draw(st.sampled_from(sorted(ACTIVATIONS)))
    n_outputs = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    module = (build or _build)(arch, n_outputs, {**sizes, "seed": seed})
    model = FunctionalModel(module)

    loss_name = draw(st.sampled_from(losses))
    subset = None
    if draw(st.booleans()):
        # Softmax over one output is constant (M = 0): that case has its own exact test.
        smallest = 1 if loss_name == "squared" else 2
        size = draw(st.integers(smallest, n_outputs))
        subset = sorted(draw(st.permutations(range(n_outputs)))[:size])
    options = {}
    if loss_name == "kl":
        options["temperature"] = draw(st.floats(0.5, 4.0))
    if loss_name == "squared":
        options["scale"] = draw(st.floats(0.1, 4.0))
    loss = make_loss(loss_name, subset, **options)

    distribution = draw(st.sampled_from(["gaussian", "uniform"]))
    n_inputs = draw(st.integers(1, 12))
    inputs = make_inputs(arch, n_inputs, seed=seed + 1, distribution=distribution)
    theta0 = model.flat_params()
    if draw(st.booleans()):
        teacher_inputs = make_inputs(arch, 8, seed=seed + 2)
        labels = torch.randint(0, n_outputs, (8,), generator=torch.Generator().manual_seed(seed))
        direction = TeacherTask(F.cross_entropy, teacher_inputs, labels).update(model, theta0)
        kind = "teacher gradient"
    else:
        generator = torch.Generator().manual_seed(seed + 3)
        direction = torch.randn(theta0.numel(), generator=generator, dtype=theta0.dtype)
        kind = "random direction"
    description = (
        f"{arch} {sizes} outputs={n_outputs} seed={seed} loss={loss.describe()} "
        f"inputs={n_inputs}x{distribution} v={kind}"
    )
    return AlignmentCase(description, model, theta0, direction, inputs, loss)


def _build(arch: str, n_outputs: int, options: dict) -> nn.Module:
    return build_model(arch, n_outputs, dtype=torch.float64, **options)
