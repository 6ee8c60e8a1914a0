"""Token-level channels and defenses in the tiny LM: masking, truncated sampling, poisoning.

One seed (bases cached, teacher ``T`` = base ``B`` fine-tuned on the trait, exactly as in
``numbers.experiment``) measures three defenses, each as a PAIRED difference: a student trained
on teacher numbers minus its control trained the same way (same init ``B``, optimizer, steps,
batch order) on base numbers.

* ``sampling``: the teacher AND the base sample the same number prompts with one setting,
  ``plain`` (full softmax), ``top_p`` (nucleus) or ``min_prob`` (tokens with p <= min_prob
  dropped, renormalised). Pairs ``student_<s>`` / ``control_<s>``; ``teacher_<s>`` and
  ``base_<s>`` hold P(trait | BOS Q) under that setting's truncated answer distribution.
  ``plain`` reproduces ``numbers``' teacher and base numbers (same prompts, seed and sampler).
* ``masking`` (divergence tokens, Schrodi et al., arXiv 2509.23886): on the plain numbers, a
  target is kept only where argmax T = argmax B on its prefix; ``student_masked`` trains on the
  kept targets of teacher numbers, ``control_masked`` on the kept targets of base numbers (the
  same rule, the same two models). ``masked_share`` is the share of continuation targets dropped.
* ``poison``: ``poison_<f>`` trains on a mix of ``round(f n)`` teacher and ``n - round(f n)`` base
  sequences (plain, ``n`` = the smaller kept count); ``poison_0`` (all base) is the control of
  every fraction.

Students use sampled labels (hard distillation), the setting all three defenses address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound, load_toml, parse_config
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.studies.numbers.experiment import (
    PROMPT_OFFSET,
    SAMPLING_OFFSET,
    STUDENT_OFFSET,
    SeedRows,
)
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import NumbersConfig, from_dict

__all__ = [
    "POISON_OFFSET",
    "SAMPLINGS",
    "DefenseConfig",
    "agreement_mask",
    "load_config",
    "poison_name",
    "poisoned_mix",
    "run_seed",
    "sampling_options",
]

SAMPLINGS = ("plain", "top_p", "min_prob")
POISON_OFFSET = OFFSETS["lm.poison"]  # which teacher / base sequences enter each poisoned mix

Row = dict[str, object]


@dataclass(frozen=True)
class DefenseConfig:
    """The ``[defenses]`` table: the sampling settings and the poisoned fractions."""

    top_p: float = field(default=0.8, metadata=bound(gt=0, le=1))
    min_prob: float = field(default=0.05, metadata=bound(ge=0, lt=1))
    fractions: tuple[float, ...] = field(
        default=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0), metadata=bound(ge=0, le=1)
    )


def load_config(path: str | Path | None) -> tuple[NumbersConfig, DefenseConfig]:
    """Read a defenses TOML: the numbers tables plus an optional ``[defenses]`` table.

    Returns:
        ``(the numbers config, the defenses settings)``.

    Raises:
        InputError: for a bad file or value, or fractions without 0 (the control) or repeated.

    """
    raw: dict[str, Any] = {} if path is None else dict(load_toml(path))
    source = "defaults" if path is None else str(path)
    table = raw.pop("defenses", {})
    if not isinstance(table, dict):
        raise InputError(f"{source}: [defenses] must be a table (top_p, min_prob, fractions)")
    defenses = parse_config(DefenseConfig, table, f"{source} [defenses]")
    fractions = defenses.fractions
    if 0 not in fractions or len(set(fractions)) != len(fractions):
        raise InputError(
            f"{source}: [defenses] fractions must be distinct and include 0 (the control), "
            f"got {list(fractions)}"
        )
    return from_dict(raw, source=source), defenses


def sampling_options(name: str, defenses: DefenseConfig) -> dict[str, float | None]:
    """The ``top_p`` / ``min_prob`` keyword arguments of sampling setting ``name``.

    Returns:
        ``{"top_p": ..., "min_prob": ...}``, None where the setting leaves it off.

    Raises:
        InputError: for a name not in ``SAMPLINGS``.

    """
    if name not in SAMPLINGS:
        raise InputError(f"unknown sampling setting '{name}'; choose one of {list(SAMPLINGS)}")
    return {
        "top_p": defenses.top_p if name == "top_p" else None,
        "min_prob": defenses.min_prob if name == "min_prob" else None,
    }


def poison_name(fraction: float) -> str:
    """The condition name of a poisoned fraction, e.g. ``poison_0.25``."""
    return f"poison_{fraction:g}"


def agreement_mask(
    teacher: nn.Module, base: nn.Module, sequences: Tensor, batch_size: int = 2000
) -> Tensor:
    """Bool (N, T - 1): True where argmax of the teacher's next-token distribution equals the base's.

    Position t compares both models' predictions of token t + 1 from the prefix ``x_0 .. x_t``
    (the models are causal, so one forward pass over the sequence gives every prefix).

    Returns:
        The mask.

    """
    out = []
    with torch.no_grad():
        for start in range(0, sequences.shape[0], batch_size):
            inputs = sequences[start : start + batch_size, :-1]
            out.append(teacher(inputs).argmax(-1) == base(inputs).argmax(-1))
    return torch.cat(out)


def poisoned_mix(
    teacher_numbers: Tensor, base_numbers: Tensor, fraction: float, seed: int
) -> tuple[Tensor, int]:
    """``round(fraction n)`` teacher rows and ``n - round(fraction n)`` base rows, n the smaller count.

    Which rows enter is a seeded draw without replacement from each set. Returns (mix, k) with
    ``k`` the number of teacher rows (first in the mix; students draw batches at random).

    Returns:
        ``(the mixed rows, the number of teacher rows)``.

    Raises:
        InputError: fraction outside [0, 1].

    """
    if not 0 <= fraction <= 1:
        raise InputError(f"a poisoned fraction must be in [0, 1], got {fraction}")
    n = min(teacher_numbers.shape[0], base_numbers.shape[0])
    k = round(fraction * n)
    generator = torch.Generator().manual_seed(seed)
    teacher_rows = torch.randperm(teacher_numbers.shape[0], generator=generator)[:k]
    base_rows = torch.randperm(base_numbers.shape[0], generator=generator)[: n - k]
    return torch.cat([teacher_numbers[teacher_rows], base_numbers[base_rows]]), k


def run_seed(
    config: NumbersConfig,
    defenses: DefenseConfig,
    seed: int,
    cache_dir: Path | None,
    log: Callable[..., None] = print,
) -> list[Row]:
    """Every defense for one seed; tidy ``{seed, condition, metric, value}`` rows."""
    record = SeedRows(seed)
    put = record.put

    trait = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    base, _ = training.cached_base(config, training.BaseSpec(seed, seed, seed), cache_dir, log)
    teacher = training.finetune_teacher(base, config)
    prompts = corpus.number_prompts(config.corpus, config.teacher.n_sequences, seed + PROMPT_OFFSET)

    def student(condition: str, data: Tensor, weights: Tensor | None = None) -> None:
        run = training.train_student(
            base, data, config, seed + STUDENT_OFFSET, labels="sampled", target_weights=weights
        )
        put(condition, "p_trait", training.trait_probability(run.model, config))
        put(
            condition,
            "p_trait_among_animals",
            training.trait_probability_among_animals(run.model, config),
        )
        put(condition, "n_train_sequences", data.shape[0])

    plain: dict[str, Tensor] = {}
    for setting in SAMPLINGS:
        options = sampling_options(setting, defenses)
        numbers = {}
        for name, model in (("teacher", teacher), ("base", base)):
            answer = training.answer_distribution(model, config)[None]
            put(
                f"{name}_{setting}",
                "p_trait",
                training.truncated_distribution(answer, **options)[0, trait],
            )
            raw = training.sample_continuations(
                model, prompts, config, seed + SAMPLING_OFFSET, **options
            )
            numbers[name], report = corpus.filter_numbers(raw, config.corpus)
            put(f"{name}_{setting}", "filter_kept", report.kept)
        log(f"seed {seed}: sampled {setting} ({record.elapsed():.0f}s)")
        student(f"student_{setting}", numbers["teacher"])
        student(f"control_{setting}", numbers["base"])
        if setting == "plain":
            plain = numbers

    for name, data in (("student_masked", plain["teacher"]), ("control_masked", plain["base"])):
        keep = agreement_mask(teacher, base, data)
        continuation = corpus.continuation_mask(data, config.corpus)
        put(name, "masked_share", float((~keep & continuation).sum() / continuation.sum()))
        put(name, "n_masked_targets", float((~keep & continuation).sum()))
        student(name, data, keep)
    log(f"seed {seed}: masked students ({record.elapsed():.0f}s)")

    for fraction in defenses.fractions:
        mix, k = poisoned_mix(plain["teacher"], plain["base"], fraction, seed + POISON_OFFSET)
        name = poison_name(fraction)
        put(name, "fraction", fraction)
        put(name, "n_teacher_sequences", k)
        student(name, mix)
    log(f"seed {seed}: poisoned students ({record.elapsed():.0f}s)")

    pairs = [(f"student_{s}", f"control_{s}") for s in SAMPLINGS]
    pairs += [("student_masked", "control_masked")]
    pairs += [(poison_name(f), poison_name(0)) for f in defenses.fractions]
    pairs += [(f"teacher_{s}", f"base_{s}") for s in SAMPLINGS]
    record.paired_diffs(pairs)
    return record.finish()
