"""Batched sampling from a chat LM with a KV cache: free, or constrained to the number grammar.

Free sampling draws each next token from softmax(logits / T). Constrained sampling draws it from
the same distribution renormalized over the tokens that keep the answer a prefix of the grammar
of :class:`sublim_theory.testbeds.real_lm.prompts.AnswerState` (digits, comma, space; the end of turn
once the answer is complete):

    p_c(t | h) = p(t | h) 1[h t stays valid] / sum_s p(s | h) 1[h s stays valid].

This is the teacher's next-token distribution conditioned on the answer staying valid one token
at a time. It is NOT the sequence-level conditional p(x | x valid), which would weight each
prefix by the chance that the teacher later stays valid; that one is what free sampling followed
by the filter (the paper's procedure) draws, at the keep rate :func:`keep_rate` reports. Each
constrained completion records ``log_valid_mass = sum_t log sum_{s valid} p(s | h_t)``, the log
of the product of the per-step kept masses: how much of the teacher's own distribution the grammar
overruled. The grammar also looks ahead at the token budget: a token is allowed only if a valid
answer can still end within ``max_new_tokens``, so every constrained completion ends with the end
of turn and passes the filter.

Determinism: the batch of rows b is drawn with a generator seeded by (seed, b), so a batch does
not depend on the batches before it (a run can resume per batch) and the same call gives the
same completions on the CPU.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError
from sublim_theory.testbeds.real_lm.prompts import AnswerState, chat_ids, passes_filter
from sublim_theory.testbeds.real_lm.sequences import (
    attention_bias,
    left_pad,
    model_device,
    model_dtype,
    pad_id,
    position_ids,
)
from sublim_theory.testbeds.real_lm.statistics import wilson_interval

__all__ = [
    "Completion",
    "KeepRate",
    "NumberGrammar",
    "decode_ids",
    "generate_ids",
    "keep_rate",
    "sample_completions",
    "sample_from_ids",
]

_ANSWER_ALPHABET = frozenset("0123456789, ")


def decode_ids(tokenizer, ids: Sequence[int]) -> str:
    """Text of generated ids, special tokens dropped, no space clean-up (the filter sees the raw text)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class NumberGrammar:
    """The answer grammar at the token level for one tokenizer.

    The candidate tokens are those whose text is made only of digits, commas and spaces (40 in
    SmolLM2's vocabulary); the end of turn is the tokenizer's ``eos_token_id``.

    Args:
        tokenizer: the chat tokenizer.

    Raises:
        InputError: the tokenizer has no end-of-sequence id, or no digit tokens.

    """

    def __init__(self, tokenizer) -> None:
        """Collect the tokenizer's tokens made of answer characters; refuse one without digits or EOS."""
        if tokenizer.eos_token_id is None:
            raise InputError("the tokenizer has no eos_token_id to end a constrained answer with")
        self.end_id = int(tokenizer.eos_token_id)
        candidates = []
        for token in range(len(tokenizer)):
            text = decode_ids(tokenizer, [token])
            if text and set(text) <= _ANSWER_ALPHABET:
                candidates.append((token, text))
        if not any(text.isdigit() for _, text in candidates):
            raise InputError("the tokenizer has no digit tokens; the number grammar cannot apply")
        self.candidates: tuple[tuple[int, str], ...] = tuple(candidates)
        self._allowed = lru_cache(maxsize=None)(self._compute_allowed)

    def _compute_allowed(self, state: AnswerState, remaining: int) -> tuple[int, ...]:
        allowed = []
        for token, text in self.candidates:
            following = state.feed(text)
            if following is not None and following.tokens_to_finish <= remaining - 1:
                allowed.append(token)
        if state.complete:
            allowed.append(self.end_id)
        return tuple(allowed)

    def allowed(self, state: AnswerState, remaining: int) -> tuple[int, ...]:
        """Token ids that keep the answer valid and finishable in ``remaining`` tokens (this one too).

        The end of turn is allowed once the answer is complete.

        Returns:
            The allowed token ids.

        """
        return self._allowed(state, min(remaining, 3))  # the look-ahead only bites at 1 or 2


@dataclass(frozen=True)
class Completion:
    """One sampled answer to one prompt.

    Attributes:
        prompt_index: index of its prompt in the call's list.
        sample_index: which of the prompt's samples.
        text: the answer text (special tokens dropped).
        token_ids: the generated ids, without the end-of-turn token.
        finished: it ended with the end of turn within ``max_new_tokens``.
        kept: finished and passes the strict filter.
        log_valid_mass: constrained sampling: sum over steps of log of the teacher's probability
            mass on the allowed tokens (<= 0); free sampling: NaN.

    """

    prompt_index: int
    sample_index: int
    text: str
    token_ids: tuple[int, ...]
    finished: bool
    kept: bool
    log_valid_mass: float


Picker = Callable[[Tensor, list[list[int]], list[bool], int], Tensor]


def generate_ids(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    pick: Picker,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad: int,
    use_cache: bool = True,
) -> tuple[list[list[int]], list[bool]]:
    """Decode one left-padded batch token by token.

    Args:
        model: causal LM called with ``input_ids, attention_mask, position_ids, past_key_values,
            use_cache, logits_to_keep``.
        prompts: the prompt token ids per row.
        pick: ``pick(next_token_logits (B, V), generated so far, done, step) -> (B,) ids``
            (the choice for a done row is ignored).
        max_new_tokens: the budget per row.
        stop_ids: tokens that end a row (kept out of its output).
        pad: padding id (also fed to finished rows).
        use_cache: reuse the key/value cache (True) or recompute the whole prefix each step
            (False: the slow reference the tests compare against).

    Runs under ``torch.inference_mode`` (``pick`` too); tensors it records are inference tensors.

    Returns:
        (generated ids per row without the stop token, whether each row stopped).

    """
    device = model_device(model)
    ids, mask = left_pad(prompts, pad, device)
    rows = ids.shape[0]
    generated: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    stops = set(int(s) for s in stop_ids)
    past = None
    keyword = _cache_keyword(model)
    dtype = model_dtype(model)
    step_input = ids
    # inference_mode, not no_grad: no version counters or view tracking on the cache and the
    # logits (about 0.8x the decoding time on a tiny Llama, where per-op overhead dominates;
    # no change at SmolLM2's size on the CPU); nothing created here leaves the function.
    with torch.inference_mode():
        for step in range(max_new_tokens):
            positions = position_ids(mask)
            if use_cache:
                out = model(
                    input_ids=step_input,
                    attention_mask=attention_bias(mask, step_input.shape[1], dtype),
                    position_ids=positions[:, -step_input.shape[1] :],
                    use_cache=True,
                    logits_to_keep=1,
                    **{keyword: past},
                )
                past = _returned_cache(out)
            else:
                out = model(
                    input_ids=ids,
                    attention_mask=attention_bias(mask, ids.shape[1], dtype),
                    position_ids=positions,
                    use_cache=False,
                    logits_to_keep=1,
                )
            chosen = pick(out.logits[:, -1], generated, done, step).tolist()
            for row in range(rows):
                if done[row]:
                    chosen[row] = pad
                elif chosen[row] in stops:
                    done[row] = True
                else:
                    generated[row].append(chosen[row])
            if all(done):
                break
            step_input = torch.tensor(chosen, dtype=torch.long, device=device)[:, None]
            ids = torch.cat([ids, step_input], dim=1)
            mask = torch.cat([mask, torch.ones_like(step_input)], dim=1)
    return generated, done


def _cache_keyword(model: nn.Module) -> str:
    """``cache`` (transformers >= 5.24) or ``past_key_values`` (older, and wrappers)."""
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _returned_cache(out) -> object:
    """The cache a forward returned (``cache`` in transformers >= 5.24, else ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _generator(seed: int, batch: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(batch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def _free_picker(temperature: float, generator: torch.Generator) -> Picker:
    def pick(logits: Tensor, generated: list[list[int]], done: list[bool], step: int) -> Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.double().cpu() / temperature, -1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return pick


def _constrained_picker(
    grammar: NumberGrammar,
    tokenizer,
    temperature: float,
    generator: torch.Generator,
    max_new_tokens: int,
    masses: list[float],
) -> Picker:
    def pick(logits: Tensor, generated: list[list[int]], done: list[bool], step: int) -> Tensor:
        scaled = logits.double().cpu() / (temperature if temperature > 0 else 1.0)
        chosen = []
        for row, so_far in enumerate(generated):
            if done[row]:
                chosen.append(grammar.end_id)
                continue
            state = AnswerState().feed(decode_ids(tokenizer, so_far))
            if state is None:
                raise RuntimeError(f"constrained answer left the grammar: {so_far}")
            allowed = torch.tensor(grammar.allowed(state, max_new_tokens - step))
            kept = scaled[row, allowed]
            masses[row] += float(kept.logsumexp(0) - scaled[row].logsumexp(0))
            if temperature == 0:
                index = int(kept.argmax())
            else:
                index = int(torch.multinomial(torch.softmax(kept, 0), 1, generator=generator))
            chosen.append(int(allowed[index]))
        return torch.tensor(chosen)

    return pick


def sample_from_ids(
    model: nn.Module,
    tokenizer,
    encoded: Sequence[Sequence[int]],
    *,
    constrained: bool = False,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    grammar: NumberGrammar | None = None,
) -> list[Completion]:
    """Sample answers to already templated prompts (token ids), free or under the number grammar.

    Rows are (prompt, sample) pairs in prompt-major order, decoded ``batch_size`` at a time.

    Args:
        model: the causal LM (eval mode).
        tokenizer: its chat tokenizer.
        encoded: the prompts' token ids (e.g. :func:`sublim_theory.testbeds.real_lm.prompts.chat_ids`).
        constrained: decode under the number grammar (module docstring).
        samples_per_prompt: samples per prompt.
        temperature: T > 0 samples from softmax(logits / T); T = 0 is greedy.
        max_new_tokens: budget per answer (>= 2 when constrained).
        batch_size: rows per batch.
        seed: the sampling seed.
        grammar: a prebuilt :class:`NumberGrammar` (built from ``tokenizer`` when None).

    Returns:
        One :class:`Completion` per row.

    Raises:
        InputError: no prompts, or a count, budget or temperature out of range.

    """
    if not encoded:
        raise InputError("no prompts to sample answers for")
    if samples_per_prompt < 1 or batch_size < 1:
        raise InputError("samples_per_prompt and batch_size must be >= 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be finite and >= 0, got {temperature}")
    if max_new_tokens < (2 if constrained else 1):
        raise InputError("max_new_tokens must be >= 2 under the grammar (a digit, then the end)")
    if constrained and grammar is None:
        grammar = NumberGrammar(tokenizer)
    rows = [(p, s) for p in range(len(encoded)) for s in range(samples_per_prompt)]
    stop_ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    if not constrained:
        stop_ids |= {int(i) for i in tokenizer.all_special_ids}
    results: list[Completion] = []
    for batch, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start : start + batch_size]
        generator = _generator(seed, batch)
        masses = [0.0] * len(chunk)
        if constrained:
            pick = _constrained_picker(
                grammar, tokenizer, temperature, generator, max_new_tokens, masses
            )
        else:
            pick = _free_picker(temperature, generator)
        generated, done = generate_ids(
            model,
            [encoded[p] for p, _ in chunk],
            pick,
            max_new_tokens=max_new_tokens,
            stop_ids=sorted(stop_ids),
            pad=pad_id(tokenizer),
        )
        for (p, s), ids, finished, mass in zip(chunk, generated, done, masses):
            text = decode_ids(tokenizer, ids)
            results.append(
                Completion(
                    prompt_index=p,
                    sample_index=s,
                    text=text,
                    token_ids=tuple(ids),
                    finished=finished,
                    kept=finished and passes_filter(text),
                    log_valid_mass=mass if constrained else math.nan,
                )
            )
    return results


def sample_completions(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    **options,
) -> list[Completion]:
    """Sample answers to chat-templated number prompts (:func:`sample_from_ids` on the prompts).

    Args:
        model: the causal LM (eval mode).
        tokenizer: its chat tokenizer.
        prompts: user prompts (e.g. :func:`sublim_theory.testbeds.real_lm.prompts.number_prompts`).
        system: a system prompt (teacher arm 1); None keeps the template's default.
        **options: ``constrained``, ``samples_per_prompt``, ``temperature``, ``max_new_tokens``,
            ``batch_size``, ``seed``, ``grammar`` of :func:`sample_from_ids`.

    Returns:
        One :class:`Completion` per (prompt, sample).

    Raises:
        InputError: no prompts (and as :func:`sample_from_ids`).

    """
    if not prompts:
        raise InputError("no prompts to sample answers for")
    encoded = [chat_ids(tokenizer, p, system=system) for p in prompts]
    return sample_from_ids(model, tokenizer, encoded, **options)


@dataclass(frozen=True)
class KeepRate:
    """The share of completions the strict filter keeps, with Wilson's 95% interval.

    Attributes:
        kept: completions kept.
        total: completions.
        share: kept / total.
        low: interval low.
        high: interval high.

    """

    kept: int
    total: int
    share: float
    low: float
    high: float


def keep_rate(completions: Sequence[Completion]) -> KeepRate:
    """The filter's keep rate over ``completions`` (finished and passing the filter).

    Returns:
        The :class:`KeepRate`.

    Raises:
        InputError: no completions.

    """
    if not completions:
        raise InputError("no completions to compute a keep rate over")
    kept = sum(c.kept for c in completions)
    low, high = wilson_interval(kept, len(completions))
    return KeepRate(kept, len(completions), kept / len(completions), low, high)
