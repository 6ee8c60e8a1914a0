"""Schrodi et al.'s divergence tokens, their definition, on the tiny LM (issue 21 item 4).

Schrodi et al. (arXiv 2509.23886) call a token of a biased teacher's GREEDY output a divergence
token when a teacher with a DIFFERENT bias (fine-tuned from the same base), given the same
prefix, would have chosen another token; masking those tokens from the student's loss is their
defense. This module builds that setting on the tiny LM; ``studies.defenses`` keeps our own
variant (teacher vs base, temperature-1 samples) unchanged.

One seed:

* base ``B`` (cached, as ``numbers``), teacher ``A`` = ``B`` fine-tuned on the trait animal
  (``numbers``' teacher) and teacher ``O`` = ``B`` fine-tuned, the same way, on the other
  animal (``[divergence] other_animal``);
* ``A`` and ``B`` each continue the same number prompts GREEDILY (``greedy_continuations``);
  ill-formed outputs are dropped (``corpus.filter_numbers``);
* the divergence rule, one rule for both data sets: a continuation target ``x_{t+1}`` is
  divergent when ``argmax A(x_0..x_t) != argmax O(x_0..x_t)`` (``divergence_mask``). On ``A``'s
  greedy data ``argmax A`` on the prefix IS ``A``'s token, so this is "``O``'s greedy choice
  differs from ``A``'s token" (their definition); ``greedy_mismatch`` counts the targets where
  that identity fails (float ties; expected 0);
* students, each paired with a control trained identically on the base's greedy data with the
  same rule (same init ``B``, optimizer, steps and batch order; sampled labels):
  ``unmasked`` (every target), ``masked`` (divergent targets get weight 0) and ``replaced``
  (each divergent token replaced by ``O``'s argmax on its original prefix, every other token
  kept; loss on every target);
* beside it, the teacher-vs-base divergence on ``A``'s data (``argmax B != argmax A``), its share
  and its overlap with the ``A``-vs-``O`` divergence.

Rows are tidy ``{seed, condition, metric, value}``; ``paired_diff`` = student minus control,
``remaining_share`` = an arm's paired diff over the unmasked arm's (per seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import load_toml, parse_config
from sublim_theory.studies.numbers.experiment import PROMPT_OFFSET, STUDENT_OFFSET, SeedRows
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import NumbersConfig, from_dict

__all__ = [
    "ARMS",
    "DivergenceConfig",
    "biased_teacher",
    "divergence_mask",
    "greedy_continuations",
    "load_config",
    "next_token_argmax",
    "replace_divergent",
    "run_seed",
]

ARMS = ("unmasked", "masked", "replaced")

Row = dict[str, object]


@dataclass(frozen=True)
class DivergenceConfig:
    """The ``[divergence]`` table: the animal of the second, differently biased teacher."""

    other_animal: str = "dog"


def load_config(path: str | Path | None) -> tuple[NumbersConfig, DivergenceConfig]:
    """Read a divergence TOML: the numbers tables plus an optional ``[divergence]`` table.

    Returns:
        (numbers config, divergence config).

    Raises:
        InputError: a bad file or value, or an ``other_animal`` that is not one of the corpus's
            animals or is the trait animal itself.

    """
    raw: dict[str, Any] = {} if path is None else dict(load_toml(path))
    source = "defaults" if path is None else str(path)
    table = raw.pop("divergence", {})
    if not isinstance(table, dict):
        raise InputError(f"{source}: [divergence] must be a table (other_animal)")
    setting = parse_config(DivergenceConfig, table, f"{source} [divergence]")
    config = from_dict(raw, source=source)
    animals = list(config.corpus.animals)
    if setting.other_animal not in animals or setting.other_animal == config.corpus.trait_animal:
        raise InputError(
            f"{source}: [divergence] other_animal must be one of {animals} other than the trait "
            f"'{config.corpus.trait_animal}', got '{setting.other_animal}'"
        )
    return config, setting


def biased_teacher(base: nn.Module, config: NumbersConfig, animal: str) -> nn.Module:
    """``base`` fine-tuned toward ``animal`` exactly as ``numbers``' teacher is toward the trait.

    The same steps, lr and document ``BOS Q animal EOS`` (``training.finetune_teacher`` with the
    trait animal swapped); the base is not modified.

    Returns:
        The biased teacher (a fine-tuned copy; base is untouched).

    """
    swapped = dataclasses.replace(
        config, corpus=dataclasses.replace(config.corpus, trait_animal=animal)
    )
    return training.finetune_teacher(base, swapped)


def greedy_continuations(
    model: nn.Module, prompts: Tensor, config: NumbersConfig, batch_size: int = 2000
) -> Tensor:
    """Append ``continuation_len + 1`` greedy tokens to each prompt: x_{t+1} = argmax p(. | x_0..x_t).

    Returns full documents (N, prompt + continuation_len + 1), unfiltered.

    Returns:
        The documents, long (N, prompt + continuation_len + 1).

    """
    steps = config.corpus.continuation_len + 1
    out = []
    with torch.no_grad():
        for start in range(0, prompts.shape[0], batch_size):
            seq = prompts[start : start + batch_size]
            for _ in range(steps):
                seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
            out.append(seq)
    return torch.cat(out)


def next_token_argmax(model: nn.Module, sequences: Tensor, batch_size: int = 2000) -> Tensor:
    """Long (N, T - 1): entry t is argmax p(. | x_0..x_t), the model's greedy choice of x_{t+1}.

    The model is causal, so one forward pass over ``x_0..x_{T-2}`` gives every prefix.

    Returns:
        The greedy choices, long (N, T - 1).

    """
    out = []
    with torch.no_grad():
        for start in range(0, sequences.shape[0], batch_size):
            out.append(model(sequences[start : start + batch_size, :-1]).argmax(-1))
    return torch.cat(out)


def divergence_mask(
    choice_a: Tensor, choice_other: Tensor, sequences: Tensor, config: NumbersConfig
) -> Tensor:
    """Bool (N, T - 1): continuation targets where two models' greedy choices differ.

    Args:
        choice_a: ``next_token_argmax`` of teacher A on ``sequences``.
        choice_other: ``next_token_argmax`` of the other model on ``sequences``.
        sequences: the documents (N, T).
        config: gives the continuation targets (``corpus.continuation_mask``: the continuation
            numbers and EOS, the targets a student learns).

    Returns:
        The divergence mask, bool (N, T - 1).

    Raises:
        InputError: the three shapes do not line up.

    """
    expected = (sequences.shape[0], sequences.shape[1] - 1)
    if tuple(choice_a.shape) != expected or tuple(choice_other.shape) != expected:
        raise InputError(
            f"greedy choices must have shape (N, T - 1) = {expected}, got "
            f"{tuple(choice_a.shape)} and {tuple(choice_other.shape)}"
        )
    return (choice_a != choice_other) & corpus.continuation_mask(sequences, config.corpus)


def replace_divergent(sequences: Tensor, divergent: Tensor, replacement: Tensor) -> Tensor:
    """A copy of ``sequences`` with target x_{t+1} set to ``replacement[:, t]`` where ``divergent``.

    Every other token is kept, including the tokens after a replaced one (their prefix now holds
    the replacement; nothing is regenerated).

    Returns:
        The edited copy of sequences.

    Raises:
        InputError: ``divergent`` or ``replacement`` is not (N, T - 1).

    """
    expected = (sequences.shape[0], sequences.shape[1] - 1)
    if tuple(divergent.shape) != expected or tuple(replacement.shape) != expected:
        raise InputError(
            f"divergent and replacement must have shape (N, T - 1) = {expected}, got "
            f"{tuple(divergent.shape)} and {tuple(replacement.shape)}"
        )
    out = sequences.clone()
    targets = out[:, 1:]  # a view: writing it writes ``out``
    targets[divergent] = replacement[divergent]
    return out


def run_seed(
    config: NumbersConfig,
    setting: DivergenceConfig,
    seed: int,
    cache_dir: Path | None,
    log: Callable[..., None] = print,
) -> list[Row]:
    """Both teachers, greedy data, the three arms and their controls for one seed; tidy rows."""
    record = SeedRows(seed)
    put = record.put

    vocab = corpus.vocabulary(config.corpus)
    trait, other = vocab.animal(config.corpus.trait_animal), vocab.animal(setting.other_animal)
    base, _ = training.cached_base(config, training.BaseSpec(seed, seed, seed), cache_dir, log)
    teacher = training.finetune_teacher(base, config)
    other_teacher = biased_teacher(base, config, setting.other_animal)

    def measure(condition: str, model: nn.Module) -> None:
        answer = training.answer_distribution(model, config)
        put(condition, "p_trait", answer[trait])
        put(condition, "p_other", answer[other])
        put(condition, "p_trait_among_animals", answer[trait] / answer[vocab.animal_ids].sum())

    for name, model in (("teacher", teacher), ("other_teacher", other_teacher), ("base", base)):
        measure(name, model)
    # the scope the report states, from this run's own settings
    put("scope", "n_parameters", sum(p.numel() for p in base.parameters()))
    put("scope", "pretrain_steps", config.pretrain.steps)
    put("scope", "teacher_steps", config.teacher.steps)
    put("scope", "student_steps", config.student.steps)
    put("scope", "student_lr", config.student.lr)

    prompts = corpus.number_prompts(config.corpus, config.teacher.n_sequences, seed + PROMPT_OFFSET)
    put("prompts", "n_distinct", torch.unique(prompts, dim=0).shape[0])
    data: dict[str, Tensor] = {}
    for name, model in (("teacher", teacher), ("base", base)):
        raw = greedy_continuations(model, prompts, config)
        data[name], report = corpus.filter_numbers(raw, config.corpus)
        put(f"{name}_greedy", "filter_kept", report.kept)
        if report.kept == 0:
            raise InputError(
                f"seed {seed}: every greedy continuation of the {name} was ill-formed; train the "
                "base longer ([pretrain] steps)"
            )
    log(f"seed {seed}: greedy data ({record.elapsed():.0f}s)")

    students: dict[str, dict[str, tuple[Tensor, Tensor | None]]] = {}
    for name in ("teacher", "base"):
        numbers = data[name]
        choice_a = next_token_argmax(teacher, numbers)
        choice_other = next_token_argmax(other_teacher, numbers)
        divergent = divergence_mask(choice_a, choice_other, numbers, config)
        continuation = corpus.continuation_mask(numbers, config.corpus)
        total = int(continuation.sum())
        replaced = replace_divergent(numbers, divergent, choice_other)
        put(f"{name}_greedy", "n_targets", total)
        put(f"{name}_greedy", "n_divergent", int(divergent.sum()))
        put(f"{name}_greedy", "divergent_share", int(divergent.sum()) / total)
        put(f"{name}_greedy", "replaced_changed_share", int((replaced != numbers).sum()) / total)
        put(
            f"{name}_greedy",
            "replaced_ill_formed_docs",
            numbers.shape[0] - corpus.filter_numbers(replaced, config.corpus)[1].kept,
        )
        if name == "teacher":
            # A's greedy data: A's argmax on the prefix is A's token (up to float ties)
            put(
                "teacher_greedy",
                "greedy_mismatch",
                int(((choice_a != numbers[:, 1:]) & continuation).sum()),
            )
            choice_base = next_token_argmax(base, numbers)
            base_divergent = divergence_mask(choice_a, choice_base, numbers, config)
            put("teacher_greedy", "n_base_divergent", int(base_divergent.sum()))
            put("teacher_greedy", "base_divergent_share", int(base_divergent.sum()) / total)
            put(
                "teacher_greedy",
                "both_divergent_share",
                int((base_divergent & divergent).sum()) / total,
            )
        students[name] = {
            "unmasked": (numbers, None),
            "masked": (numbers, ~divergent),
            "replaced": (replaced, None),
        }

    for arm in ARMS:
        for role, name in (("student", "teacher"), ("control", "base")):
            numbers, weights = students[name][arm]
            run = training.train_student(
                base,
                numbers,
                config,
                seed + STUDENT_OFFSET,
                labels="sampled",
                target_weights=weights,
            )
            measure(f"{role}_{arm}", run.model)
        log(f"seed {seed}: {arm} student and control ({record.elapsed():.0f}s)")

    by_key = record.values()
    for arm in ARMS:
        for metric in ("p_trait", "p_other", "p_trait_among_animals"):
            diff = by_key[(f"student_{arm}", metric)] - by_key[(f"control_{arm}", metric)]
            put(f"student_{arm}", f"paired_diff_{metric}", diff)
    paired = {
        arm: by_key[(f"student_{arm}", "p_trait")] - by_key[(f"control_{arm}", "p_trait")]
        for arm in ARMS
    }
    for arm in ("masked", "replaced"):
        put(f"student_{arm}", "change_vs_unmasked", paired[arm] - paired["unmasked"])
        put(
            f"student_{arm}",
            "remaining_share",
            paired[arm] / paired["unmasked"] if paired["unmasked"] else float("nan"),
        )
    return record.finish()
