"""Token entanglement: which number tokens the teacher up-weights, and the trait's unembedding.

For every number token n, ``log_ratio[n]`` is the mean over the continuation positions of
control (base-sampled) sequences of ``log p_teacher(n | context) - log p_base(n | context)``. The
trait fine-tune moved the trait token's logit; numbers whose unembedding row ``W_n`` (the LM
head) points along the trait's row ``W_trait`` share that direction, so a fine-tune that raises
the trait's logit tends to raise theirs too. ``dot[n] = <W_n, W_trait>`` at the base.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sublim_theory.engine.alignment import cosine
from sublim_theory.testbeds.lm import corpus
from sublim_theory.testbeds.lm.config import NumbersConfig

__all__ = [
    "entanglement_table",
]


def _number_log_probs(model: nn.Module, sequences: Tensor, config: NumbersConfig) -> Tensor:
    mask = corpus.continuation_mask(sequences[:1], config.corpus)[0]
    ids = corpus.vocabulary(config.corpus).number_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(sequences[:, :-1]).double(), -1)[:, mask][..., ids]
    return logp.reshape(-1, ids.numel()).mean(0)


def _pearson(a: Tensor, b: Tensor) -> float:
    return cosine(a - a.mean(), b - b.mean())


def entanglement_table(
    base: nn.Module, teacher: nn.Module, sequences: Tensor, config: NumbersConfig, top: int = 10
) -> tuple[list[dict], dict[str, float]]:
    """Top up-weighted number tokens with their unembedding alignment to the trait token.

    Returns (rows, summary). Each row: rank, number, log_ratio, dot_trait, cos_trait,
    dot_rank (rank of dot_trait among all numbers, 1 = most aligned). The summary holds the
    Pearson correlation between log_ratio and dot_trait over all numbers, and the mean dot of
    the top tokens against the mean over all numbers.

    Returns:
        ``(rows, summary)``.

    """
    vocab = corpus.vocabulary(config.corpus)
    ratio = _number_log_probs(teacher, sequences, config) - _number_log_probs(
        base, sequences, config
    )
    head = base.head.weight.detach().double()
    trait_row = head[vocab.animal(config.corpus.trait_animal)]
    rows_w = head[vocab.number_ids]
    dots = rows_w @ trait_row
    cos = dots / (rows_w.norm(dim=1) * trait_row.norm())
    dot_rank = torch.empty_like(dots)
    dot_rank[dots.argsort(descending=True)] = torch.arange(1, dots.numel() + 1, dtype=dots.dtype)
    order = ratio.argsort(descending=True)[:top]
    rows = [
        {
            "rank": i + 1,
            "number": int(n),
            "log_ratio": float(ratio[n]),
            "dot_trait": float(dots[n]),
            "cos_trait": float(cos[n]),
            "dot_rank": int(dot_rank[n]),
        }
        for i, n in enumerate(order)
    ]
    summary = {
        "entanglement_pearson_logratio_dot": _pearson(ratio, dots),
        "entanglement_top_mean_dot": float(dots[order].mean()),
        "entanglement_all_mean_dot": float(dots.mean()),
        "entanglement_top_mean_dot_rank": float(dot_rank[order].mean()),
    }
    return rows, summary
