"""The first-order pass: the one-step push of teacher vs base numbers on log P(animal).

For a student at theta_0 (the base) and one SGD step of learning rate eta on a batch B with the
student loss L_B = mean_{i in B} L_i (:func:`sublim_theory.testbeds.real_lm.train.completion_loss`), the
change of the mean log-probability of animal a over the evaluation questions,
m_a(theta) = mean_q log P_theta(a | q) (:func:`sublim_theory.testbeds.real_lm.evaluate.animal_log_probs`),
is, to first order in eta,

    Delta m_a = eta <grad m_a(theta_0), -grad L_B(theta_0)> + O(eta^2) = eta mean_{i in B} d_{i,a},
    d_{i,a} = -<grad m_a(theta_0), grad L_i(theta_0)>,

the engine's one-step forecast (THEORY.md section 1: the student's step dotted with a trait
direction, here the gradient of the evaluation itself). d_{i,a} is example i's attribution: the
push it alone gives to animal a per unit learning rate. The power check compares the d_{i,a} of
teacher completions with those of base completions by Welch's t, per animal, before any
training: if the teacher's numbers do not push the target animal more than the base's at first
order, a one-step student cannot see the trait, and a multi-step one would need the effect to
build up. The parameters are those of ``model`` with ``requires_grad`` (all of them for the
base; the adapters for a LoRA-wrapped model). Forecasts are for SGD: Adam's first step is a
sign-like rescaling of the gradient, outside this formula.

Cost: one backward over the questions per animal, one backward per example; memory holds one
gradient per animal (4 bytes x 134.5M = 538 MB each for SmolLM2 in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError
from sublim_theory.testbeds.real_lm.evaluate import animal_log_probs
from sublim_theory.testbeds.real_lm.statistics import WelchResult, welch_test
from sublim_theory.testbeds.real_lm.train import completion_loss

__all__ = [
    "ForecastResult",
    "animal_directions",
    "example_pushes",
    "forecast",
]

Example = tuple[str, str]


def _parameters(model: nn.Module) -> list[Tensor]:
    trained = [p for p in model.parameters() if p.requires_grad]
    if not trained:
        raise InputError("the model has no parameter with requires_grad; nothing to forecast")
    return trained


def animal_directions(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str],
    animals: Sequence[str],
) -> list[list[Tensor]]:
    """grad_theta m_a(theta_0) for each animal (module docstring), no system prompt.

    Returns:
        Per animal, one gradient tensor per trained parameter (detached).

    Raises:
        InputError: no animals (and as :func:`sublim_theory.testbeds.real_lm.evaluate.animal_log_probs`).

    """
    if not animals:
        raise InputError("no animals to forecast")
    parameters = _parameters(model)
    directions = []
    for animal in animals:
        mean = animal_log_probs(model, tokenizer, questions, animal).mean()
        directions.append([g.detach() for g in torch.autograd.grad(mean, parameters)])
    return directions


def example_pushes(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    directions: Sequence[Sequence[Tensor]],
) -> np.ndarray:
    """d_{i,a} = -<grad m_a, grad L_i> for each example i and direction a (float64 sums).

    Returns:
        An array of shape (len(examples), len(directions)).

    Raises:
        InputError: no examples.

    """
    if not examples:
        raise InputError("no examples to attribute")
    parameters = _parameters(model)
    pushes = np.zeros((len(examples), len(directions)))
    for i, example in enumerate(examples):
        gradient = torch.autograd.grad(completion_loss(model, tokenizer, [example]), parameters)
        for a, direction in enumerate(directions):
            pushes[i, a] = -sum(
                float(torch.dot(u.reshape(-1).double(), g.reshape(-1).double()))
                for u, g in zip(direction, gradient)
            )
    return pushes


@dataclass(frozen=True)
class ForecastResult:
    """The first-order pass, per animal.

    Attributes:
        animals: the animals, in order.
        teacher: d_{i,a} for the teacher's examples, (n_teacher, n_animals).
        base: d_{i,a} for the base's examples, (n_base, n_animals).
        tests: per animal, Welch's t of teacher minus base pushes.

    """

    animals: tuple[str, ...]
    teacher: np.ndarray
    base: np.ndarray
    tests: dict[str, WelchResult]

    def rank(self, animal: str) -> int:
        """The animal's place (1 = largest) when animals are ordered by Welch t, descending."""
        order = sorted(self.animals, key=lambda a: self.tests[a].t, reverse=True)
        return order.index(animal) + 1


def forecast(
    model: nn.Module,
    tokenizer,
    teacher_examples: Sequence[Example],
    base_examples: Sequence[Example],
    questions: Sequence[str],
    animals: Sequence[str],
) -> ForecastResult:
    """The power check: per animal, teacher vs base pushes with Welch's t (module docstring).

    Args:
        model: the student at theta_0 (the base; parameters with requires_grad are the space).
        tokenizer: its chat tokenizer.
        teacher_examples: (prompt, completion) pairs answered by the teacher.
        base_examples: (prompt, completion) pairs answered by the base.
        questions: the evaluation questions.
        animals: the target animal and the comparison animals.

    Returns:
        The :class:`ForecastResult`.

    """
    model.eval()
    directions = animal_directions(model, tokenizer, questions, animals)
    teacher = example_pushes(model, tokenizer, teacher_examples, directions)
    base = example_pushes(model, tokenizer, base_examples, directions)
    tests = {a: welch_test(teacher[:, k], base[:, k]) for k, a in enumerate(animals)}
    return ForecastResult(tuple(animals), teacher, base, tests)
