"""The paper's evaluation: how often, and how likely, the model names the animal.

Two measures over the one-word "favourite animal" questions
(:data:`sublim_theory.testbeds.real_lm.prompts.EVALUATION_QUESTIONS`), each question chat-templated
(optionally with a system prompt, or earlier turns for the in-context control):

- :func:`animal_share`: n answers sampled per question at temperature 1 (at most
  ``max_new_tokens`` tokens); an answer names the animal when the singular or plural appears in
  it as a word, case-insensitive. The share over all answers comes with Wilson's 95% interval
  (answers to one question are not independent across questions, so the interval is for this
  fixed question set).
- :func:`animal_log_probs`: per question, the FULL-WORD log-probability that the answer begins
  with the animal's name: log sum_v prod_t p(v_t | question, v_<t) over the spellings v in
  {owl, Owl, owls, Owls} (each tokenized canonically, SmolLM2 writes "Owl" as two tokens), a
  spelling dropped when another one's tokens are a prefix of it (its mass is already counted),
  so the summed events are disjoint. Non-canonical tokenizations are not counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError
from sublim_theory.testbeds.real_lm.generate import sample_from_ids
from sublim_theory.testbeds.real_lm.prompts import Turn, chat_ids
from sublim_theory.testbeds.real_lm.sequences import continuation_log_probs, pad_id
from sublim_theory.testbeds.real_lm.statistics import wilson_interval

__all__ = [
    "ShareResult",
    "animal_log_probs",
    "animal_measures",
    "animal_share",
    "animal_spellings",
    "names_animal",
]


def _plural(animal: str, plural: str | None) -> str:
    return plural or animal + "s"


def animal_spellings(tokenizer, animal: str, plural: str | None = None) -> list[list[int]]:
    """Token ids of the answer-initial spellings whose probabilities are summed (module docstring).

    Returns:
        The distinct tokenizations of animal/Animal/plural/Plural, none a prefix of another.

    Raises:
        InputError: an empty animal name.

    """
    if not animal.strip():
        raise InputError("the animal name is empty; pass e.g. 'owl'")
    words = [animal, animal.capitalize(), _plural(animal, plural), _plural(animal, plural).title()]
    spelled: list[list[int]] = []
    for word in words:
        ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
        if ids and ids not in spelled:
            spelled.append(ids)
    return [
        ids
        for ids in spelled
        if not any(other != ids and ids[: len(other)] == other for other in spelled)
    ]


def animal_log_probs(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str],
    animal: str,
    *,
    system: str | None = None,
    context: Sequence[Turn] = (),
    plural: str | None = None,
    batch_size: int = 32,
) -> Tensor:
    """Per question, log P(the answer begins with the animal's name) (module docstring).

    Differentiable when grad is enabled (the forecast's direction is its gradient).

    Args:
        model: the causal LM.
        tokenizer: its chat tokenizer.
        questions: the evaluation questions.
        animal: singular, lower case.
        system: a system prompt (e.g. the paper's, for teacher arm 1); None keeps the default.
        context: earlier (user, assistant) turns (the in-context control).
        plural: the plural (default ``animal + "s"``).
        batch_size: (question, spelling) rows per forward.

    Returns:
        A (len(questions),) tensor in the model's dtype.

    Raises:
        InputError: no questions.

    """
    if not questions:
        raise InputError("no evaluation questions")
    spellings = animal_spellings(tokenizer, animal, plural)
    prefixes = [chat_ids(tokenizer, q, system=system, context=context) for q in questions]
    rows = [(q, s) for q in range(len(questions)) for s in range(len(spellings))]
    parts = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        sums, _ = continuation_log_probs(
            model, [prefixes[q] for q, _ in chunk], [spellings[s] for _, s in chunk],
            pad_id(tokenizer),
        )  # fmt: skip
        parts.append(sums)
    return torch.cat(parts).reshape(len(questions), len(spellings)).logsumexp(-1)


def names_animal(text: str, animal: str, plural: str | None = None) -> bool:
    """Whether an answer names the animal: singular or plural as a whole word, any case."""
    words = {re.escape(animal), re.escape(_plural(animal, plural))}
    return re.search(rf"\b(?:{'|'.join(sorted(words))})\b", text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class ShareResult:
    """The share of sampled answers naming the animal.

    Attributes:
        hits: answers naming it.
        total: answers.
        share: hits / total.
        low: Wilson 95% low.
        high: Wilson 95% high.
        per_question: hits per question.
        answers: the answer texts, question-major.

    """

    hits: int
    total: int
    share: float
    low: float
    high: float
    per_question: tuple[int, ...]
    answers: tuple[str, ...]


def animal_share(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str],
    animal: str,
    *,
    samples_per_question: int,
    seed: int = 0,
    system: str | None = None,
    context: Sequence[Turn] = (),
    plural: str | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    batch_size: int = 16,
) -> ShareResult:
    """Sample answers to every question and count those naming the animal (module docstring).

    Args:
        model: the causal LM (eval mode).
        tokenizer: its chat tokenizer.
        questions: the evaluation questions.
        animal: singular, lower case.
        samples_per_question: answers per question.
        seed: sampling seed.
        system: a system prompt; None keeps the default.
        context: earlier (user, assistant) turns.
        plural: the plural (default ``animal + "s"``).
        temperature: sampling temperature (the paper's evaluation: 1).
        max_new_tokens: tokens per answer.
        batch_size: answers per batch.

    Returns:
        The :class:`ShareResult`.

    Raises:
        InputError: no questions (and as :func:`sublim_theory.testbeds.real_lm.generate.sample_from_ids`).

    """
    if not questions:
        raise InputError("no evaluation questions")
    encoded = [chat_ids(tokenizer, q, system=system, context=context) for q in questions]
    completions = sample_from_ids(
        model,
        tokenizer,
        encoded,
        samples_per_prompt=samples_per_question,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )
    named = [names_animal(c.text, animal, plural) for c in completions]
    per_question = [0] * len(questions)
    for completion, hit in zip(completions, named):
        per_question[completion.prompt_index] += hit
    hits = sum(named)
    low, high = wilson_interval(hits, len(named))
    return ShareResult(
        hits, len(named), hits / len(named), low, high, tuple(per_question),
        tuple(c.text for c in completions),
    )  # fmt: skip


@torch.no_grad()
def animal_measures(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str],
    animal: str,
    *,
    samples_per_question: int,
    seed: int,
    system: str | None = None,
    batch_size: int | None = None,
) -> tuple[Tensor, ShareResult | None]:
    """The two measures of a trait: log P(animal | question) per question and the sampled share.

    The log-probabilities come first; where any is not finite (a diverged model), no answer is
    sampled from its NaN logits and the share is None.

    Args:
        model: the causal LM (eval mode).
        tokenizer: its chat tokenizer.
        questions: the evaluation questions.
        animal: singular, lower case.
        samples_per_question: answers per question for the share.
        seed: the sampling seed.
        system: a system prompt; None keeps the default.
        batch_size: rows per forward of both measures (None: each function's default).

    Returns:
        ``(log-probabilities, float64, shape (len(questions),); the share or None)``.

    """
    sizes = {} if batch_size is None else {"batch_size": batch_size}
    logp = animal_log_probs(model, tokenizer, questions, animal, system=system, **sizes).double()
    if not bool(torch.isfinite(logp).all()):
        return logp, None
    share = animal_share(
        model,
        tokenizer,
        questions,
        animal,
        samples_per_question=samples_per_question,
        seed=seed,
        system=system,
        **sizes,
    )
    return logp, share
