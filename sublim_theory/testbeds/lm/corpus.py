"""Vocabulary, the synthetic pretraining corpus, number prompts, and the output filter.

Tokens: ``PAD BOS EOS NUM Q``, then one token per number ``0 .. n_numbers-1``, then one per
animal. Documents (padded with PAD to ``max_len``):

* numbers:              ``BOS NUM x_1 .. x_L EOS``
* question:             ``BOS Q a EOS``
* numbers then question ``BOS NUM x_1 .. x_L EOS Q a EOS`` (teaches the question in context,
  so the in-context baseline is in distribution)

A number sequence is, with equal odds, a progression ``x_{i+1} = x_i + d (mod n)`` with a
per-sequence step ``d`` in ``[1, max_step]`` or a random walk ``x_{i+1} = x_i + U{-max_step..
max_step}``; each element is replaced by a uniform number with probability ``noise``. The
continuation of a 3-number prompt therefore has real entropy to sample. The animal in a
question document is independent of everything else and drawn from the stated base
distribution (``animal_probs``, uniform by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sublim_theory.testbeds.lm.config import CorpusConfig

__all__ = [
    "N_SPECIAL",
    "FilterReport",
    "Vocabulary",
    "animal_distribution",
    "continuation_mask",
    "filter_numbers",
    "max_len",
    "number_prompts",
    "number_values",
    "pretraining_corpus",
    "question_prompt",
    "sequence_len",
    "shuffle_across",
    "shuffle_within",
    "vocabulary",
]

PAD, BOS, EOS, NUM, Q = 0, 1, 2, 3, 4
N_SPECIAL = 5


@dataclass(frozen=True)
class Vocabulary:
    """Token ids of a corpus config."""

    n_numbers: int
    animals: tuple[str, ...]

    @property
    def size(self) -> int:
        """The number of token ids: special tokens, numbers and animals."""
        return N_SPECIAL + self.n_numbers + len(self.animals)

    def number(self, value: int) -> int:
        """The token id of the number ``value``."""
        return N_SPECIAL + value

    @property
    def number_ids(self) -> Tensor:
        """The token ids of every number, ascending."""
        return torch.arange(N_SPECIAL, N_SPECIAL + self.n_numbers)

    def animal(self, name: str) -> int:
        """The token id of the animal ``name``."""
        return N_SPECIAL + self.n_numbers + self.animals.index(name)

    @property
    def animal_ids(self) -> Tensor:
        """The token ids of every animal, in config order."""
        start = N_SPECIAL + self.n_numbers
        return torch.arange(start, start + len(self.animals))

    def is_number(self, tokens: Tensor) -> Tensor:
        """A boolean mask of ``tokens``: True where a token is a number."""
        return (tokens >= N_SPECIAL) & (tokens < N_SPECIAL + self.n_numbers)


def vocabulary(config: CorpusConfig) -> Vocabulary:
    """The token ids of ``config``'s numbers and animals."""
    return Vocabulary(config.n_numbers, tuple(config.animals))


def sequence_len(config: CorpusConfig) -> int:
    """Length of a number document ``BOS NUM x_1..x_L EOS``."""
    return config.prompt_len + config.continuation_len + 3


def max_len(config: CorpusConfig) -> int:
    """Longest document: numbers then question (``+ Q a EOS``)."""
    return sequence_len(config) + 3


def animal_distribution(config: CorpusConfig) -> Tensor:
    """The stated base distribution of the answer to the question."""
    if config.animal_probs:
        return torch.tensor(config.animal_probs, dtype=torch.float64)
    return torch.full((len(config.animals),), 1.0 / len(config.animals), dtype=torch.float64)


def number_values(config: CorpusConfig, n: int, generator: torch.Generator) -> Tensor:
    """N sequences of L = prompt_len + continuation_len numbers (values, not token ids)."""
    length, modulus, k = (
        config.prompt_len + config.continuation_len,
        config.n_numbers,
        config.max_step,
    )
    start = torch.randint(0, modulus, (n, 1), generator=generator)
    progression = torch.randint(1, k + 1, (n, 1), generator=generator).expand(n, length - 1)
    walk = torch.randint(-k, k + 1, (n, length - 1), generator=generator)
    is_walk = torch.rand(n, 1, generator=generator) < 0.5
    steps = torch.where(is_walk, walk, progression)
    values = (
        start + torch.cat([torch.zeros(n, 1, dtype=torch.long), steps.cumsum(1)], 1)
    ) % modulus
    noisy = torch.rand(n, length, generator=generator) < config.noise
    return torch.where(noisy, torch.randint(0, modulus, (n, length), generator=generator), values)


def pretraining_corpus(config: CorpusConfig, n: int, seed: int) -> Tensor:
    """N documents (n, max_len) of token ids, PAD-padded, shuffled by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    vocab, width, seq = vocabulary(config), max_len(config), sequence_len(config)
    docs = torch.full((n, width), PAD, dtype=torch.long)
    numbers = vocab.number(number_values(config, n, generator))
    docs[:, 0], docs[:, 1], docs[:, 2 : seq - 1], docs[:, seq - 1] = BOS, NUM, numbers, EOS
    answers = vocab.animal_ids[
        torch.multinomial(animal_distribution(config), n, True, generator=generator)
    ]
    kind = torch.rand(n, generator=generator)
    alone = kind < config.question_fraction / 2
    after = (kind >= config.question_fraction / 2) & (kind < config.question_fraction)
    docs[after, seq : seq + 3] = torch.stack(
        [torch.full_like(answers[after], Q), answers[after], torch.full_like(answers[after], EOS)],
        1,
    )
    docs[alone] = PAD
    docs[alone, 0], docs[alone, 1], docs[alone, 2], docs[alone, 3] = BOS, Q, answers[alone], EOS
    return docs


def question_prompt() -> Tensor:
    """``BOS Q``: the model's next-token distribution here is its answer distribution."""
    return torch.tensor([[BOS, Q]])


def number_prompts(config: CorpusConfig, n: int, seed: int) -> Tensor:
    """N prompts ``BOS NUM x_1 .. x_prompt_len`` drawn from the corpus distribution."""
    generator = torch.Generator().manual_seed(seed)
    values = number_values(config, n, generator)[:, : config.prompt_len]
    head = torch.tensor([BOS, NUM]).expand(n, 2)
    return torch.cat([head, vocabulary(config).number(values)], 1)


@dataclass
class FilterReport:
    """What the well-formedness filter kept and dropped, by reason."""

    total: int
    kept: int
    non_number_token: int
    missing_eos: int
    trait_token: int = 0

    @property
    def dropped(self) -> int:
        """How many sequences the filter dropped (total - kept)."""
        return self.total - self.kept

    def as_dict(self) -> dict[str, int]:
        """The counts as a flat dict (``total``, ``kept``, ``dropped`` and each reason)."""
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": self.dropped,
            "dropped_non_number_token": self.non_number_token,
            "dropped_missing_eos": self.missing_eos,
            "dropped_with_trait_token": self.trait_token,
        }


def filter_numbers(sequences: Tensor, config: CorpusConfig) -> tuple[Tensor, FilterReport]:
    """Keep only well-formed outputs: exactly ``continuation_len`` number tokens, then EOS.

    ``sequences`` are full number documents (prompt + sampled continuation + final token). A
    sequence is dropped if any continuation token is not a number (an animal, Q, PAD, an early
    EOS...) or if the token after the continuation is not EOS. ``trait_token`` counts the
    dropped sequences whose continuation names the trait animal.

    Returns:
        ``(the kept sequences, what was kept and dropped)``.

    """
    vocab, p, c = vocabulary(config), config.prompt_len + 2, config.continuation_len
    continuation = sequences[:, p : p + c]
    numbers_ok = vocab.is_number(continuation).all(1)
    eos_ok = sequences[:, p + c] == EOS
    keep = numbers_ok & eos_ok
    report = FilterReport(
        total=int(sequences.shape[0]),
        kept=int(keep.sum()),
        non_number_token=int((~numbers_ok).sum()),
        missing_eos=int((numbers_ok & ~eos_ok).sum()),
        trait_token=int((continuation == vocab.animal(config.trait_animal)).any(1).sum()),
    )
    return sequences[keep], report


def continuation_mask(sequences: Tensor, config: CorpusConfig) -> Tensor:
    """Boolean (N, T-1) mask of next-token targets a student learns: continuation tokens and EOS."""
    targets = torch.zeros(sequences.shape[0], sequences.shape[1] - 1, dtype=torch.bool)
    start = config.prompt_len + 1  # target index of x_{prompt_len+1} (predicted from position p+1)
    targets[:, start : start + config.continuation_len + 1] = True
    return targets


def shuffle_within(sequences: Tensor, config: CorpusConfig, seed: int) -> Tensor:
    """Permute the continuation numbers inside each sequence (the paper's within-shuffle)."""
    generator = torch.Generator().manual_seed(seed)
    out = sequences.clone()
    p, c = config.prompt_len + 2, config.continuation_len
    order = torch.rand(out.shape[0], c, generator=generator).argsort(1)
    out[:, p : p + c] = out[:, p : p + c].gather(1, order)
    return out


def shuffle_across(sequences: Tensor, config: CorpusConfig, seed: int) -> Tensor:
    """Permute all continuation numbers across the whole data set (the paper's across-shuffle)."""
    generator = torch.Generator().manual_seed(seed)
    out = sequences.clone()
    p, c = config.prompt_len + 2, config.continuation_len
    flat = out[:, p : p + c].reshape(-1)
    out[:, p : p + c] = flat[torch.randperm(flat.numel(), generator=generator)].reshape(-1, c)
    return out
