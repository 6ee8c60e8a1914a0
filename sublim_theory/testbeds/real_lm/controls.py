"""Controls of the number experiment: shuffled numbers and the in-context control.

- :func:`shuffled_examples`: the same prompts with the teacher's numbers shuffled, either within
  each completion (keeps every completion's multiset of numbers, destroys order) or across the
  whole data set (keeps the data set's multiset and each completion's length, destroys which
  numbers go together). Completions are rewritten as "a, b, c".
- :func:`in_context_effect`: the paper's in-context-learning control (Section 5): the base, NOT
  fine-tuned, sees k (prompt, completion) pairs as earlier conversation turns, then each
  evaluation question; compared, question by question, with the same question asked without
  them. The paired difference of log P(animal) (:func:`sublim_theory.testbeds.real_lm.evaluate.
  animal_log_probs`) with a 95% t-interval over questions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sublim_theory.errors import InputError
from sublim_theory.harness.records import mean_interval
from sublim_theory.testbeds.real_lm.evaluate import animal_log_probs

__all__ = [
    "InContextResult",
    "in_context_effect",
    "shuffled_examples",
]

Example = tuple[str, str]


def shuffled_examples(
    examples: Sequence[Example], seed: int, *, across: bool = False
) -> list[Example]:
    """The examples with their completions' numbers shuffled (module docstring).

    Args:
        examples: (prompt, completion) pairs whose completions hold numbers.
        seed: the shuffle's seed.
        across: shuffle across the data set (True) or within each completion (False).

    Returns:
        New (prompt, "n1, n2, ...") pairs, in the same order.

    Raises:
        InputError: a completion without numbers.

    """
    rng = random.Random(seed)
    numbers = [re.findall(r"\d+", completion) for _, completion in examples]
    if any(not found for found in numbers):
        raise InputError("every completion must hold at least one number to shuffle")
    if across:
        pool = [n for found in numbers for n in found]
        rng.shuffle(pool)
        shuffled, start = [], 0
        for found in numbers:
            shuffled.append(pool[start : start + len(found)])
            start += len(found)
    else:
        shuffled = [rng.sample(found, len(found)) for found in numbers]
    return [(prompt, ", ".join(new)) for (prompt, _), new in zip(examples, shuffled)]


@dataclass(frozen=True)
class InContextResult:
    """The in-context control on log P(animal), per question and paired.

    Attributes:
        with_context: log P(animal) per question after the k example turns.
        without_context: log P(animal) per question alone.
        mean_difference: mean over questions of with - without.
        half_width: half-width of the 95% t-interval of that mean (over questions).
        shots: k.

    """

    with_context: np.ndarray
    without_context: np.ndarray
    mean_difference: float
    half_width: float
    shots: int


def in_context_effect(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    questions: Sequence[str],
    animal: str,
    *,
    shots: int,
    batch_size: int = 8,
) -> InContextResult:
    """The base's log P(animal) with the first ``shots`` examples in context vs without.

    Args:
        model: the base (not fine-tuned).
        tokenizer: its chat tokenizer.
        examples: (prompt, completion) pairs (e.g. the teacher's kept completions).
        questions: the evaluation questions.
        animal: the animal.
        shots: how many examples become earlier turns.
        batch_size: rows per forward (contexts are long: keep it small on the CPU).

    Returns:
        The :class:`InContextResult`.

    Raises:
        InputError: shots < 1 or more than the examples.

    """
    if not 1 <= shots <= len(examples):
        raise InputError(f"shots must be in [1, {len(examples)}], got {shots}")
    with torch.no_grad():
        with_context = animal_log_probs(
            model, tokenizer, questions, animal, context=list(examples[:shots]),
            batch_size=batch_size,
        ).double().numpy()  # fmt: skip
        alone = animal_log_probs(model, tokenizer, questions, animal).double().numpy()
    mean, half, _ = mean_interval((with_context - alone).tolist())
    return InContextResult(with_context, alone, mean, half, shots)
