"""Batching token sequences for a causal LM: left padding, positions, continuation log-probs.

Every batch is LEFT padded, so all rows end at the last position: the next-token logits of a
batch are ``logits[:, -1]`` and a continuation of length c occupies the last c positions. Position
ids count real tokens only (``cumsum(mask) - 1``) and the attention mask is passed as a 4-D
additive bias (:func:`attention_bias`), so a padded row computes what it would alone (up to
float rounding) in float32 and float64 alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError

__all__ = [
    "attention_bias",
    "continuation_log_probs",
    "continuation_log_softmax",
    "left_pad",
    "model_device",
    "model_dtype",
    "pad_id",
    "position_ids",
]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its end-of-sequence id (padding is masked either way)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def left_pad(
    sequences: Sequence[Sequence[int]], pad: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Left-pad token sequences into (ids, attention mask), both (batch, longest) int64.

    Returns:
        (ids, mask): mask is 1 on real tokens.

    Raises:
        InputError: no sequences, or an empty one.

    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise InputError("every sequence must hold at least one token")
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, longest - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, longest - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(mask: Tensor) -> Tensor:
    """Positions counting real tokens only: ``cumsum(mask) - 1``, 0 on the left padding."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def attention_bias(mask: Tensor, query_length: int, dtype: torch.dtype) -> Tensor:
    """The additive (batch, 1, queries, keys) attention mask of left-padded rows.

    Query q (the last ``query_length`` positions) sees key k iff k <= q and k is a real token,
    or k = q. The diagonal keeps every padding query attending to something: with the library's
    2-D mask a padding query sees no key, its softmax row is all -inf in float64 (transformers
    casts the float64 minimum to float32's -inf) and the NaN reaches real rows through 0 * NaN.

    Returns:
        0 where visible, ``finfo(dtype).min`` elsewhere.

    """
    keys = mask.shape[1]
    key_index = torch.arange(keys, device=mask.device)
    query_index = key_index[keys - query_length :]
    causal = key_index[None, :] <= query_index[:, None]
    own = key_index[None, None, :] == query_index[None, :, None]
    visible = causal[None] & (mask[:, None, :].bool() | own)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(visible, torch.zeros((), dtype=dtype, device=mask.device), blocked)[:, None]


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def continuation_log_softmax(
    model: nn.Module,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the next-token log-probabilities at each ``continuation`` token, in ONE batch.

    One forward of the left-padded ``prefix + continuation`` rows; only the last
    ``max len(c)`` positions' logits are computed. Row r's scored positions are the last
    ``len(c_r)`` of the ``longest`` columns: column j predicts the token
    ``ids[r, L - longest + j]``. Differentiable when grad is enabled.

    Args:
        model: a causal LM (``model(input_ids, attention_mask, position_ids, logits_to_keep)``).
        prefixes: token ids before each continuation (the chat-templated prompt).
        continuations: the scored token ids (non-empty).
        pad: the padding id.

    Returns:
        ``(log_probs, targets, scored)``: (rows, longest, vocabulary) log-softmax in the model's
        dtype, the (rows, longest) tokens they predict, and the (rows, longest) bool mask of
        scored positions (False on a shorter row's padding columns).

    Raises:
        InputError: row counts differ, or an empty prefix or continuation.

    """
    if len(prefixes) != len(continuations) or not prefixes:
        raise InputError(
            f"need as many prefixes as continuations (>= 1), got {len(prefixes)} and "
            f"{len(continuations)}"
        )
    if any(len(c) == 0 for c in continuations) or any(len(p) == 0 for p in prefixes):
        raise InputError("every prefix and continuation must hold at least one token")
    rows = [list(p) + list(c) for p, c in zip(prefixes, continuations)]
    ids, mask = left_pad(rows, pad, model_device(model))
    longest = max(len(c) for c in continuations)
    logits = model(
        input_ids=ids,
        attention_mask=attention_bias(mask, ids.shape[1], model_dtype(model)),
        position_ids=position_ids(mask),
        logits_to_keep=longest + 1,
        use_cache=False,
    ).logits[:, :-1]
    # logits[:, j] predicts token ids[:, L - longest + j] for j = 0 .. longest - 1.
    lengths = torch.tensor([len(c) for c in continuations], device=ids.device)
    scored = torch.arange(longest, device=ids.device)[None, :] >= (longest - lengths)[:, None]
    return logits.log_softmax(-1), ids[:, -longest:], scored


def continuation_log_probs(
    model: nn.Module,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad: int,
) -> tuple[Tensor, Tensor]:
    """Per row, the summed log-probability of ``continuation`` after ``prefix``, in ONE batch.

    log P(c | p) = sum_t log softmax(f(p + c[:t]))[c_t], from
    :func:`continuation_log_softmax` (one forward; the arguments are its own).
    Differentiable when grad is enabled (the training loss and the forecast use it).

    Returns:
        (sums, counts): log P per row (model dtype) and the continuation lengths (int64).

    Raises:
        InputError: row counts differ, or an empty prefix or continuation.

    """
    log_probs, targets, scored = continuation_log_softmax(model, prefixes, continuations, pad)
    token_log_probs = log_probs.gather(-1, targets[..., None])[..., 0]
    # where, not a product: a padded row's masked logits must not leak a NaN into the sum.
    return torch.where(scored, token_log_probs, 0.0).sum(-1), scored.sum(-1)
