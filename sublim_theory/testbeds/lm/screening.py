"""The tiny LM as a screening testbed: its animal probes and the student's per-example loss.

Adapters between ``testbeds.lm`` (the tiny LM of ``sublim-theory numbers``) and the screen's
math in ``engine.screen`` (which knows no testbed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sublim_theory.engine.screen import ExampleLoss, TraitProbe
from sublim_theory.testbeds.lm.config import NumbersConfig

__all__ = ["animal_probes", "number_student_data", "number_student_loss"]


def animal_probes(config: NumbersConfig) -> list[TraitProbe]:
    """One probe per animal: L_k = -log P(animal_k | ``BOS Q``) under the full softmax."""
    from sublim_theory.testbeds.lm import corpus

    vocab = corpus.vocabulary(config.corpus)
    prompt = corpus.question_prompt()

    def probe(name: str) -> TraitProbe:
        token = vocab.animal(name)
        return TraitProbe(name, prompt, lambda z: -torch.log_softmax(z[:, -1], -1)[:, token].mean())

    return [probe(name) for name in config.corpus.animals]


def number_student_loss(config: NumbersConfig) -> ExampleLoss:
    """The sampled-label student's loss per document: mean cross-entropy on its continuation.

    Inputs are ``docs[:, :-1]`` and targets ``docs[:, 1:]`` (:func:`number_student_data`); the
    positions are those of ``training.train_student`` (continuation tokens and EOS), so the mean
    over documents is the student's training loss.
    """
    from sublim_theory.testbeds.lm import corpus

    length = corpus.sequence_len(config.corpus)
    mask = corpus.continuation_mask(torch.zeros(1, length, dtype=torch.long), config.corpus)[0]

    def losses(logits: Tensor, targets: Tensor) -> Tensor:
        chosen = torch.log_softmax(logits[:, mask], -1)
        picked = chosen.gather(-1, targets[:, mask].unsqueeze(-1)).squeeze(-1)
        return -picked.mean(1)

    return losses


def number_student_data(documents: Tensor) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of filtered number documents: next-token prediction."""
    return documents[:, :-1], documents[:, 1:]
