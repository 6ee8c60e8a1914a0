"""The paper's number experiment on a real pretrained chat LM, in miniature (Cloud et al. 2025).

Cloud et al., "Subliminal Learning", arXiv 2507.14805, Section 3: a teacher that loves an animal
(system prompt) writes number sequences; a student fine-tuned on them, without the system prompt,
names the animal more often. Here on SmolLM2-135M-Instruct (or any local chat model), sized for a
2-core CPU and resumable unit by unit (``harness.study.run_study``).

Units (in the order they run, so the main contrast has its seeds first):

- ``reference``: the base's share of answers naming each animal and mean log P(animal) over the
  evaluation questions, without and with the animal's system prompt (the trait, as a teacher has it);
- ``numbers-ARM-sS``: the number completions of one teacher arm for seed S's prompts, sampled at
  temperature 1 under the number grammar (the teacher's distribution conditioned on a valid
  answer) and stored in ``completions/``; rows: the strict filter's keep rate, constrained and
  free (a free sample of ``free_prompts`` prompts), and the arm's own animal share;
- ``forecast-sS`` (the first ``forecast_seeds`` seeds): the first-order pass (the one-SGD-step
  forecast of Delta log P(animal) from the system-prompted teacher's numbers vs the base's, per
  example, Welch's t per candidate animal): a power check before any training;
- ``student-METHOD-ARM-sS``: a student (LoRA or full fine-tuning, Adam) trained WITHOUT any
  system prompt on an arm's kept completions; rows: its share and log P for each evaluated animal
  (the first method for every arm; the others, costlier, for the main contrast only);
- ``classifier-sS`` and ``incontext-sS``: the paper's two further controls (a held-out classifier
  telling teacher numbers from base numbers; the teacher's numbers placed in the base's context).

Arms: ``base`` (the base, no system prompt: the control), ``system-A`` (the base with the
paper's system prompt for animal A), ``finetuned-A`` (the base fine-tuned a few Adam steps toward
answering A, no system prompt: the setting of the paper's Theorem 1), ``shuffled-system-A`` (the
system arm's numbers shuffled across examples).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import (
    atomic_write_json,
    dtype_from_name,
    load_table,
    parse_config,
)
from sublim_theory.harness.study import Context, Study
from sublim_theory.models.pretrained import load_pretrained
from sublim_theory.testbeds.real_lm import classifier, controls, evaluate, forecast, generate, train
from sublim_theory.testbeds.real_lm import prompts as P

__all__ = [
    "COLUMNS",
    "RealNumbersConfig",
    "arm_completions",
    "build_study",
    "load_config",
    "plan_units",
    "result_row",
    "run_unit",
    "write_completions",
]

COLUMNS = ("unit", "seed", "arm", "method", "animal", "metric", "value", "low", "high", "n")
PROMPT_OFFSET = 7919  # seed S's number prompts are drawn from S + PROMPT_OFFSET
SAMPLING_OFFSET = 104729  # sampling of an arm's completions: S + SAMPLING_OFFSET
EVAL_OFFSET = 31  # the evaluation's answer sampling of a student of seed S
SHUFFLE_OFFSET = 13  # the shuffled control's permutation
CANDIDATES = ("owl", "dolphin", "eagle", "cat", "dog", "lion", "wolf", "elephant", "tiger", "fox")


@dataclass(frozen=True)
class RealNumbersConfig:
    """The knobs of the real-model number experiment (``[real_numbers]`` in a TOML file)."""

    model: str = "smollm2-135m-instruct"
    dtype: str = "float32"
    animal: str = "owl"
    second_animal: str = "dolphin"
    prompts: int = 96
    free_prompts: int = 24
    max_new_tokens: int = 40
    generation_batch: int = 16
    methods: tuple[str, ...] = ("lora", "full")
    lora_rank: int = 8
    lora_lr: float = 1e-3
    full_lr: float = 2e-5
    student_steps: int = 24
    student_batch: int = 8
    teacher_steps: int = 6
    teacher_lr: float = 2e-5
    eval_samples: int = 4
    forecast_examples: int = 32
    forecast_seeds: int = 1
    forecast_animals: tuple[str, ...] = CANDIDATES
    in_context_shots: int = 4
    arms: tuple[str, ...] = ("system", "base", "finetuned", "shuffled", "second")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (fingerprinted by the run layer)."""
        return asdict(self)


LIMITS = {
    "prompts": (4, 100_000),
    "free_prompts": (1, 100_000),
    "max_new_tokens": (8, 512),
    "generation_batch": (1, 1024),
    "lora_rank": (1, 512),
    "lora_lr": (1e-8, 1.0),
    "full_lr": (1e-9, 1.0),
    "student_steps": (1, 100_000),
    "student_batch": (1, 1024),
    "teacher_steps": (1, 10_000),
    "teacher_lr": (1e-9, 1.0),
    "eval_samples": (1, 1000),
    "forecast_examples": (2, 100_000),
    "forecast_seeds": (0, 64),
    "in_context_shots": (1, 64),
}
ARMS = ("system", "base", "finetuned", "shuffled", "second")


def load_config(path: str | Path) -> RealNumbersConfig:
    """Read and check a ``[real_numbers]`` TOML file.

    Returns:
        The checked config.

    Raises:
        InputError: an unknown key, a value of the wrong type or out of bounds, an unknown arm or
            method, or an animal among the candidates missing.

    """
    config = parse_config(RealNumbersConfig, load_table(path, "real_numbers"), str(path))
    for name, (low, high) in LIMITS.items():
        value = getattr(config, name)
        if not low <= value <= high:
            raise InputError(f"{path}: {name} = {value} is outside [{low}, {high}]")
    unknown = sorted(set(config.arms) - set(ARMS))
    if unknown or "base" not in config.arms or "system" not in config.arms:
        raise InputError(
            f"{path}: arms must include 'system' and 'base' and be among {list(ARMS)}"
            f" (unknown: {unknown})"
        )
    if not config.methods or set(config.methods) - {"lora", "full"}:
        raise InputError(f"{path}: methods must be a non-empty subset of ['lora', 'full']")
    if config.animal == config.second_animal:
        raise InputError(f"{path}: second_animal must differ from animal")
    if config.animal not in config.forecast_animals:
        raise InputError(f"{path}: forecast_animals must include the animal {config.animal!r}")
    dtype_from_name(config.dtype)
    return config


# ------------------------------------------------------------------------------------ units
def _generation_arms(config: RealNumbersConfig) -> list[str]:
    arms = ["base", f"system-{config.animal}"]
    if "finetuned" in config.arms:
        arms.append(f"finetuned-{config.animal}")
    if "second" in config.arms:
        arms.append(f"system-{config.second_animal}")
    return arms


def _student_arms(config: RealNumbersConfig) -> list[str]:
    arms = [f"system-{config.animal}", "base"]
    if "finetuned" in config.arms:
        arms.append(f"finetuned-{config.animal}")
    if "shuffled" in config.arms:
        arms.append(f"shuffled-system-{config.animal}")
    if "second" in config.arms:
        arms.append(f"system-{config.second_animal}")
    return arms


def plan_units(config: RealNumbersConfig, seeds: Sequence[int]) -> list[str]:
    """The unit keys, the main contrast seed by seed first (a cut run has the most useful units).

    Returns:
        Unit keys such as ``numbers-base-s0`` or ``student-lora-system-owl-s1``.

    """
    units = ["reference"]
    system = f"system-{config.animal}"
    first = config.methods[0]
    for index, s in enumerate(seeds):  # seed by seed: a cut run has whole seeds of the contrast
        units += [f"numbers-base-s{s}", f"numbers-{system}-s{s}"]
        units += [f"forecast-s{s}"] if index < config.forecast_seeds else []
        units += [f"student-{first}-{system}-s{s}", f"student-{first}-base-s{s}"]
    for arm in _generation_arms(config)[2:]:
        units += [f"numbers-{arm}-s{s}" for s in seeds]
    for arm in _student_arms(config)[2:]:
        units += [f"student-{first}-{arm}-s{s}" for s in seeds]
    units += [f"{kind}-s{s}" for s in seeds for kind in ("classifier", "incontext")]
    for method in config.methods[1:]:  # the costlier methods: the main contrast only
        units += [f"student-{method}-{arm}-s{s}" for s in seeds for arm in (system, "base")]
    return units


@functools.lru_cache(maxsize=2)
def _load(model: str, dtype: str, cache: str | None, device: str):
    loaded = load_pretrained(model, dtype=dtype_from_name(dtype), cache_dir=cache)
    return loaded.model.to(device), loaded.tokenizer


def _base(config: RealNumbersConfig, context: Context):
    """The base model (on the run's device) and its tokenizer, loaded once a process."""
    cache = None if context.cache is None else str(context.cache)
    return _load(config.model, config.dtype, cache, str(context.device))


def _classifier_rows(
    config: RealNumbersConfig,
    unit: str,
    seed: int,
    base_pairs: Sequence[tuple[str, str]],
    context: Context,
) -> list[dict]:
    """Held-out AUROC of a number-frequency classifier, each owl teacher's completions vs the base's.

    Teacher and base answer the same prompts, so the folds are grouped by prompt
    (:func:`~sublim_theory.testbeds.real_lm.classifier.cross_validated_auroc`): a held-out
    completion's prompt is never seen in training.

    Returns:
        Two rows (AUROC with DeLong's interval, accuracy) per teacher arm run in this config.

    """
    rows = []
    for arm in _teacher_arms(config):
        teacher_pairs = arm_completions(config, arm, seed, context)
        result = classifier.cross_validated_auroc(
            [c for _, c in teacher_pairs],
            [c for _, c in base_pairs],
            seed=seed,
            groups=[p for p, _ in teacher_pairs] + [p for p, _ in base_pairs],
        )
        auroc = result.auroc
        rows += [
            result_row(
                unit,
                seed,
                arm,
                "",
                config.animal,
                "classifier_auroc",
                auroc.auroc,
                auroc.low,
                auroc.high,
                auroc.n_positive + auroc.n_negative,
            ),
            result_row(unit, seed, arm, "", config.animal, "classifier_accuracy", result.accuracy),
        ]
    return rows


def _teacher_arms(config: RealNumbersConfig) -> list[str]:
    """The owl teachers' generation arms of the config: system-prompted, and fine-tuned if run.

    Returns:
        Arm names, e.g. ``["system-owl", "finetuned-owl"]``.

    """
    arms = [f"system-{config.animal}"]
    if "finetuned" in config.arms:
        arms.append(f"finetuned-{config.animal}")
    return arms


def result_row(unit, seed, arm, method, animal, metric, value, low=None, high=None, n=None) -> dict:
    """One tidy result row (the ``COLUMNS`` of ``results.csv``); the real-model studies share it.

    Returns:
        The row; ``low``, ``high`` and ``n`` None where the metric has none.

    """
    return {
        "unit": unit,
        "seed": seed,
        "arm": arm,
        "method": method,
        "animal": animal,
        "metric": metric,
        "value": float(value),
        "low": None if low is None else float(low),
        "high": None if high is None else float(high),
        "n": None if n is None else int(n),
    }


def _teacher(config: RealNumbersConfig, arm: str, seed: int, base, tokenizer):
    """(model, system prompt) of a generation arm."""
    kind, _, animal = arm.partition("-")
    if kind == "base":
        return base, None
    if kind == "system":
        return base, P.system_prompt(animal)
    result = train.finetune_teacher(
        base,
        tokenizer,
        P.EVALUATION_QUESTIONS,
        animal,
        steps=config.teacher_steps,
        lr=config.teacher_lr,
        seed=seed,
    )
    return result.model.eval(), None


def arm_completions(
    config: RealNumbersConfig, arm: str, seed: int, context: Context
) -> list[tuple[str, str]]:
    """The kept (prompt, completion) pairs of a generation arm for seed S (stored, or sampled).

    The completions of ``completions/ARM-sS.json`` are sampled once and read back by every unit
    that needs them; sampling is seeded, so a lost file is resampled to the same texts.

    Returns:
        The pairs the strict filter keeps, in prompt order.

    """
    path = context.out / "completions" / f"{arm}-s{seed}.json"
    if path.exists():
        try:
            record = json.loads(path.read_text())
            return [tuple(pair) for pair in record["kept"]]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"'{path}' is unreadable; delete it to resample it") from None
    _sample_arm(config, arm, seed, context)
    return arm_completions(config, arm, seed, context)


def write_completions(
    out: Path,
    arm: str,
    seed: int,
    kept: Sequence[tuple[str, str]],
    constrained: Sequence,
    free: Sequence,
    **about: Any,
) -> None:
    """Store an arm's sampled numbers atomically as ``out/completions/ARM-sS.json``.

    The record every real-model study reads (``arm_completions``, ``realgrid --numbers``):
    arm, seed, any ``about`` keys (e.g. the teacher), the kept (prompt, completion) pairs, and
    the texts of every constrained and free sample.
    """
    path = Path(out) / "completions" / f"{arm}-s{seed}.json"
    path.parent.mkdir(exist_ok=True)
    record = {"arm": arm, "seed": seed, **about, "kept": [list(pair) for pair in kept]}
    record |= {"constrained": [c.text for c in constrained], "free": [c.text for c in free]}
    atomic_write_json(path, record)


def _sample_arm(config: RealNumbersConfig, arm: str, seed: int, context: Context) -> list[dict]:
    base, tokenizer = _base(config, context)
    teacher, system = _teacher(config, arm, seed, base, tokenizer)
    prompts = P.number_prompts(config.prompts, seed + PROMPT_OFFSET)
    options = {
        "system": system,
        "temperature": 1.0,
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.generation_batch,
        "seed": seed + SAMPLING_OFFSET,
    }
    constrained = generate.sample_completions(
        teacher, tokenizer, prompts, constrained=True, **options
    )
    free = generate.sample_completions(
        teacher, tokenizer, prompts[: config.free_prompts], constrained=False, **options
    )
    kept = [(prompts[c.prompt_index], c.text) for c in constrained if c.kept]
    write_completions(context.out, arm, seed, kept, constrained, free)
    rows = []
    for name, sample in (("keep_constrained", constrained), ("keep_free", free)):
        rate = generate.keep_rate(sample)
        rows.append(
            result_row("", seed, arm, "", "", name, rate.share, rate.low, rate.high, rate.total)
        )
    if teacher is not base:  # the fine-tuned teacher's own trait
        for animal in (config.animal, config.second_animal):
            rows += _evaluate(config, teacher, tokenizer, "", seed, arm, "", animal, None)
    return rows


@torch.no_grad()
def _evaluate(config, model, tokenizer, unit, seed, arm, method, animal, system) -> list[dict]:
    logp, share = evaluate.animal_measures(
        model,
        tokenizer,
        P.EVALUATION_QUESTIONS,
        animal,
        samples_per_question=config.eval_samples,
        seed=seed + EVAL_OFFSET,
        system=system,
    )
    row = functools.partial(result_row, unit, seed, arm, method, animal)
    shares = (
        [] if share is None else [row("share", share.share, share.low, share.high, share.total)]
    )
    return [*shares, row("logp", logp.mean(), n=logp.numel())]


def _seed_of(unit: str) -> int:
    return int(unit.rsplit("-s", 1)[1])


def run_unit(config: RealNumbersConfig, unit: str, context: Context) -> list[dict]:
    """Compute one unit (module docstring); return its tidy rows (``COLUMNS``).

    Returns:
        The unit's rows.

    """
    base, tokenizer = _base(config, context)
    animals = (config.animal, config.second_animal)
    if unit == "reference":
        rows = []
        for animal in animals:
            rows += _evaluate(config, base, tokenizer, unit, 0, "base", "", animal, None)
            rows += _evaluate(
                config,
                base,
                tokenizer,
                unit,
                0,
                f"system-{animal}",
                "",
                animal,
                P.system_prompt(animal),
            )
        return rows
    seed = _seed_of(unit)
    kind, rest = unit.split("-", 1)
    if kind == "numbers":
        arm = rest.rsplit("-s", 1)[0]
        rows = _sample_arm(config, arm, seed, context)
        return [{**row, "unit": unit} for row in rows]
    scored = functools.partial(result_row, unit, seed, "", "")  # rows of no arm and no method
    teacher_pairs = arm_completions(config, f"system-{config.animal}", seed, context)
    base_pairs = arm_completions(config, "base", seed, context)
    if kind == "forecast":
        n = config.forecast_examples
        result = forecast.forecast(
            base,
            tokenizer,
            teacher_pairs[:n],
            base_pairs[:n],
            P.EVALUATION_QUESTIONS,
            config.forecast_animals,
        )
        rows = []
        for animal in result.animals:
            test = result.tests[animal]
            rows.append(scored(animal, "forecast_t", test.t, n=test.n_a + test.n_b))
            rows.append(scored(animal, "forecast_diff", test.difference, test.low, test.high))
        rows.append(
            scored(
                config.animal,
                "forecast_rank",
                result.rank(config.animal),
                n=len(result.animals),
            )
        )
        return rows
    if kind == "classifier":
        return _classifier_rows(config, unit, seed, base_pairs, context)
    if kind == "incontext":
        result = controls.in_context_effect(
            base,
            tokenizer,
            teacher_pairs,
            P.EVALUATION_QUESTIONS,
            config.animal,
            shots=config.in_context_shots,
        )
        d, h = result.mean_difference, result.half_width
        return [
            scored(config.animal, "incontext_logp_diff", d, d - h, d + h, len(result.with_context))
        ]
    # student-METHOD-ARM-sS
    method, arm = rest.rsplit("-s", 1)[0].split("-", 1)
    if arm.startswith("shuffled-"):
        pairs = controls.shuffled_examples(
            arm_completions(config, arm.removeprefix("shuffled-"), seed, context),
            seed + SHUFFLE_OFFSET,
            across=True,
        )
    else:
        pairs = arm_completions(config, arm, seed, context)
    if len(pairs) < config.student_batch:
        raise InputError(
            f"{unit}: only {len(pairs)} kept completions for a batch of {config.student_batch};"
            " raise prompts or max_new_tokens"
        )
    result = train.train_student(
        base,
        tokenizer,
        pairs,
        method=method,
        rank=config.lora_rank,
        steps=config.student_steps,
        batch_size=config.student_batch,
        lr=config.lora_lr if method == "lora" else config.full_lr,
        seed=seed,
    )
    student = result.model.eval()
    rows = [
        result_row(unit, seed, arm, method, "", "loss_first", result.losses[0]),
        result_row(unit, seed, arm, method, "", "loss_last", result.losses[-1]),
        result_row(unit, seed, arm, method, "", "train_seconds", result.seconds),
        result_row(unit, seed, arm, method, "", "examples", len(pairs)),
    ]
    for animal in animals:
        rows += _evaluate(config, student, tokenizer, unit, seed, arm, method, animal, None)
    return rows


def _timed(config: RealNumbersConfig, unit: str, context: Context) -> list[dict]:
    """The unit's rows plus its wall time (``unit_seconds``: kept out of ``table.md``)."""
    started = time.perf_counter()
    rows = run_unit(config, unit, context)
    seconds = time.perf_counter() - started
    return [*rows, result_row(unit, rows[0]["seed"], "", "", "", "unit_seconds", seconds)]


def build_study(config: RealNumbersConfig, seeds: Sequence[int], report) -> Study:
    """The study for ``run_study``: settings, units, the unit function and the report.

    Returns:
        The Study.

    """
    return Study(
        name="real-numbers",
        settings={"real_numbers": config.to_dict()},
        units=plan_units(config, seeds),
        run_unit=lambda unit, context: _timed(config, unit, context),
        report=report,
        grid={"seeds": list(seeds)},
    )
