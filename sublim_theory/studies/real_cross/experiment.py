r"""The cross-family control of the real-model number experiment (Cloud et al. 2025).

Cloud et al., "Subliminal Learning", arXiv 2507.14805, cross-model section: numbers written by a
teacher of one model family do not carry its trait to a student of another family; transfer needs
a shared initialization. Here: the teacher is Gemma 3 270M (base, no chat template), the students
are the SmolLM2-135M-Instruct LoRA students of a ``sublim-theory real`` folder (``--numbers``).

Same prompts, same students. Seed S's number prompts are real_numbers' prompts of seed S
(``P.number_prompts(prompts, S + PROMPT_OFFSET)``, the count from the folder's ``run.json``),
and every student setting (model, LoRA rank, lr, steps, batch, evaluation samples) is read from
that ``run.json``, so a cross-family student differs from the folder's students of the same seed
in its training completions only (the same LoRA A_0 and batch indices when the counts agree).

Teacher arms (a base model has no system turn, so the preamble is plain text):

- ``gemma-owl``: ``"{the paper's owl system prompt}\n\nUser: {prompt}\nAnswer:"``;
- ``gemma-base``: ``"User: {prompt}\nAnswer:"``.

Both are sampled at temperature 1 under the number grammar (``generate.sample_from_ids``, the
code real_numbers uses), with the newline as the end of the answer: a base model ends a line,
not a turn, so the grammar's end token is the tokenizer's ``"\n"`` (one token), and an answer
is complete when the grammar allows it to end. Gemma's tokenizer writes each digit, comma and
space as its own token; the grammar works on the decoded text, so it needs no change. A free
sample of the first ``free_prompts`` prompts gives the strict filter's keep rate without the
grammar. The kept completions (spaces at either end stripped) become (prompt, completion) pairs
that SmolLM2 re-tokenizes in its own chat format, without any system prompt.

Units (seed by seed, so a cut run has whole paired seeds): ``numbers-gemma-owl-sS``,
``numbers-gemma-base-sS`` (completions stored in ``completions/ARM-sS.json`` and shared),
``student-lora-gemma-owl-sS``, ``student-lora-gemma-base-sS`` (rows: loss, the share of sampled
answers naming the animal and the mean log P(animal), evaluated as real_numbers' students).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import (
    bound,
    dtype_from_name,
    load_table,
    parse_config,
)
from sublim_theory.harness.study import Context
from sublim_theory.models.pretrained import load_pretrained
from sublim_theory.studies.real_numbers.experiment import (
    COLUMNS,
    EVAL_OFFSET,
    PROMPT_OFFSET,
    SAMPLING_OFFSET,
    result_row,
    write_completions,
)
from sublim_theory.testbeds.real_lm import evaluate, generate, train
from sublim_theory.testbeds.real_lm import prompts as P

__all__ = [
    "ARMS",
    "COLUMNS",
    "LineEnd",
    "NumbersSource",
    "RealCrossConfig",
    "arm_completions",
    "load_config",
    "plan_units",
    "prompts_of",
    "read_numbers",
    "run_unit",
    "teacher_text",
]

ARMS = ("gemma-owl", "gemma-base")
STORED_ARMS = ("system", "base")  # the numbers folder's same-family students (system-ANIMAL)


@dataclass(frozen=True)
class RealCrossConfig:
    """The knobs of the cross-family control (``[real_cross]`` in a TOML file).

    Attributes:
        teacher: the other family's model (a packaged name or a local transformers folder).
        dtype: the teacher's dtype (the students' is the numbers folder's).
        max_new_tokens: the answer budget in the teacher's tokens (Gemma spends one per digit).
        generation_batch: rows per decoding batch.
        free_prompts: prompts of the free (unconstrained) sample, for its keep rate.

    """

    teacher: str = "gemma3-270m"
    dtype: str = "float32"
    max_new_tokens: int = field(default=40, metadata=bound(ge=8, le=512))
    generation_batch: int = field(default=16, metadata=bound(ge=1, le=1024))
    free_prompts: int = field(default=16, metadata=bound(ge=1, le=100_000))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (fingerprinted by the run layer)."""
        return asdict(self)


def load_config(path: str | Path | None) -> RealCrossConfig:
    """Read and check a ``[real_cross]`` TOML file (None: the built-in defaults).

    Returns:
        The checked config.

    Raises:
        InputError: an unknown key, a value of the wrong type or out of bounds, a bad dtype.

    """
    source = str(path or "defaults")
    table = {} if path is None else load_table(path, "real_cross")
    config = parse_config(RealCrossConfig, table, source)
    dtype_from_name(config.dtype)
    return config


# ------------------------------------------------------------------------------------ source
@dataclass(frozen=True)
class NumbersSource:
    """What the cross-family control takes from a ``sublim-theory real`` folder.

    Attributes:
        folder: the folder.
        fingerprint: its ``run.json`` fingerprint.
        student: the student settings (model, dtype, animal, prompts, lora_rank, lora_lr,
            student_steps, student_batch, eval_samples) from its ``run.json``.
        stored: the folder's stored LoRA students of the same family: rows of
            ``student-lora-system-ANIMAL-sS`` and ``student-lora-base-sS`` whose record carries
            the folder's fingerprint (absent units are simply missing).

    """

    folder: Path
    fingerprint: str
    student: dict[str, Any]
    stored: tuple[dict, ...]

    def settings(self) -> dict[str, Any]:
        """The settings fingerprinted with the study's own (a different folder is refused).

        Returns:
            The numbers folder's fingerprint and student settings.

        """
        return {"fingerprint": self.fingerprint, **self.student}


STUDENT_KEYS = (
    "model", "dtype", "animal", "prompts", "lora_rank", "lora_lr", "student_steps", "student_batch",
    "eval_samples",
)  # fmt: skip


def read_numbers(folder: str | Path, seeds: Sequence[int]) -> NumbersSource:
    """Read a real_numbers folder's settings, check its prompts, collect its stored students.

    The prompts check: every kept prompt of ``completions/base-sS.json`` (where present) must be
    one of :func:`prompts_of` for seed S, else the folder was written by other prompt code.

    Returns:
        The :class:`NumbersSource`.

    Raises:
        InputError: no folder, no readable ``run.json`` of ``real-numbers`` with the student
            settings, or stored completions whose prompts are not this code's prompts.

    """
    folder = Path(folder)
    record_path = folder / "run.json"
    if not record_path.is_file():
        raise InputError(
            f"--numbers '{folder}' has no run.json; pass the --out folder of `sublim-theory real`"
        )
    try:
        record = json.loads(record_path.read_text())
        settings = record["settings"]["real_numbers"]
        student = {key: settings[key] for key in STUDENT_KEYS}
        fingerprint = str(record["fingerprint"])
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"'{record_path}' is not a run.json of `sublim-theory real` (no real_numbers "
            "settings); pass that command's --out folder"
        ) from None
    if "lora" not in settings.get("methods", ["lora"]):
        raise InputError(f"'{record_path}' trained no LoRA students; the control needs them")
    for seed in seeds:
        path = folder / "completions" / f"base-s{seed}.json"
        if path.is_file():
            try:
                kept = {prompt for prompt, _ in json.loads(path.read_text())["kept"]}
            except (ValueError, KeyError, TypeError):
                raise InputError(f"'{path}' is unreadable; pass an intact numbers folder") from None
            if not kept <= set(prompts_of(student["prompts"], seed)):
                raise InputError(
                    f"'{path}' holds prompts other than seed {seed}'s number prompts; "
                    "pass a folder written by this version of `sublim-theory real`"
                )
    stored = []
    animal = student["animal"]
    for seed in seeds:
        for arm in (f"system-{animal}", "base"):
            path = folder / "units" / f"unit-student-lora-{arm}-s{seed}.json"
            if not path.is_file():
                continue
            try:
                unit = json.loads(path.read_text())
            except ValueError:
                raise InputError(f"'{path}' is unreadable; delete it or repair it") from None
            if unit.get("fingerprint") == fingerprint:
                stored += [r for r in unit["rows"] if r["metric"] in ("share", "logp")]
    return NumbersSource(folder, fingerprint, student, tuple(stored))


def prompts_of(count: int, seed: int) -> list[str]:
    """Seed S's number prompts, exactly real_numbers' (``S + PROMPT_OFFSET``).

    Returns:
        The user prompts.

    """
    return P.number_prompts(count, seed + PROMPT_OFFSET)


def plan_units(seeds: Sequence[int]) -> list[str]:
    """The unit keys, seed by seed: both arms' numbers, then both arms' students.

    Returns:
        Keys such as ``numbers-gemma-owl-s0`` or ``student-lora-gemma-base-s2``.

    """
    units = []
    for s in seeds:
        units += [f"numbers-{arm}-s{s}" for arm in ARMS]
        units += [f"student-lora-{arm}-s{s}" for arm in ARMS]
    return units


# ------------------------------------------------------------------------------------ teacher
class LineEnd:
    """A tokenizer seen with the newline as its end of sequence (a base model ends a line).

    Everything but ``eos_token_id`` is the wrapped tokenizer's, so the grammar and the sampler
    run unchanged; the original end-of-sequence token stays a special token (free sampling stops
    at it too).

    Args:
        tokenizer: the base model's tokenizer.

    Raises:
        InputError: the newline is not exactly one token.

    """

    def __init__(self, tokenizer) -> None:
        """Wrap ``tokenizer``; find its newline token."""
        ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(
                f"the teacher's tokenizer writes a newline as {len(ids)} tokens; the answer end "
                "must be one token"
            )
        self.tokenizer = tokenizer
        self.eos_token_id = int(ids[0])

    def __len__(self) -> int:
        """The wrapped vocabulary's size."""
        return len(self.tokenizer)

    def __getattr__(self, name: str) -> Any:
        """Everything else from the wrapped tokenizer."""
        return getattr(self.tokenizer, name)


def teacher_text(prompt: str, preamble: str | None) -> str:
    r"""The plain-text prompt a base model continues (no chat template).

    Returns:
        ``"PREAMBLE\n\nUser: PROMPT\nAnswer:"`` (without the preamble line when None).

    """
    head = "" if preamble is None else preamble + "\n\n"
    return f"{head}User: {prompt}\nAnswer:"


def _preamble(arm: str, animal: str) -> str | None:
    return P.system_prompt(animal) if arm == "gemma-owl" else None


@functools.lru_cache(maxsize=2)
def _load(model: str, dtype: str, cache: str | None, device: str):
    loaded = load_pretrained(model, dtype=dtype_from_name(dtype), cache_dir=cache)
    return loaded.model.to(device), loaded.tokenizer


def _model(name: str, dtype: str, context: Context):
    cache = None if context.cache is None else str(context.cache)
    return _load(name, dtype, cache, str(context.device))


def _sample_arm(
    config: RealCrossConfig, source: NumbersSource, arm: str, seed: int, context: Context
) -> list[dict]:
    model, tokenizer = _model(config.teacher, config.dtype, context)
    ended = LineEnd(tokenizer)
    prompts = prompts_of(source.student["prompts"], seed)
    preamble = _preamble(arm, source.student["animal"])
    encoded = [
        list(tokenizer(teacher_text(p, preamble), add_special_tokens=True)["input_ids"])
        for p in prompts
    ]
    window = getattr(model.config, "sliding_window", None)
    longest = max(len(e) for e in encoded) + config.max_new_tokens
    if window is not None and longest > window:  # the sampler's mask spans the whole prefix
        raise InputError(
            f"a prompt and its answer take {longest} tokens, beyond the teacher's sliding "
            f"window of {window}; lower max_new_tokens"
        )
    options = {
        "temperature": 1.0,
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.generation_batch,
        "seed": seed + SAMPLING_OFFSET,
    }
    constrained = generate.sample_from_ids(model, ended, encoded, constrained=True, **options)
    free = generate.sample_from_ids(
        model, ended, encoded[: config.free_prompts], constrained=False, **options
    )
    kept = [(prompts[c.prompt_index], c.text.strip(" ")) for c in constrained if c.kept]
    write_completions(
        context.out, arm, seed, kept, constrained, free, teacher=config.teacher, preamble=preamble
    )
    unit = f"numbers-{arm}-s{seed}"
    rows = []
    for name, sample in (("keep_constrained", constrained), ("keep_free", free)):
        rate = generate.keep_rate(sample)
        rows.append(
            result_row(unit, seed, arm, "", "", name, rate.share, rate.low, rate.high, rate.total)
        )
    masses = torch.tensor([c.log_valid_mass for c in constrained], dtype=torch.float64)
    rows.append(
        result_row(unit, seed, arm, "", "", "log_valid_mass", masses.mean(), n=masses.numel())
    )
    return rows


def arm_completions(
    config: RealCrossConfig, source: NumbersSource, arm: str, seed: int, context: Context
) -> list[tuple[str, str]]:
    """The kept (prompt, completion) pairs of a teacher arm for seed S (stored, or sampled).

    Returns:
        The pairs, in prompt order.

    Raises:
        InputError: a stored completions file that cannot be read.

    """
    path = context.out / "completions" / f"{arm}-s{seed}.json"
    if not path.exists():
        _sample_arm(config, source, arm, seed, context)
    try:
        return [tuple(pair) for pair in json.loads(path.read_text())["kept"]]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"'{path}' is unreadable; delete it to resample it") from None


@torch.no_grad()
def _evaluate(source: NumbersSource, model, tokenizer, unit, seed, arm) -> list[dict]:
    """The share and mean log P(animal) of a student, as real_numbers evaluates its students."""
    animal = source.student["animal"]
    share = evaluate.animal_share(
        model,
        tokenizer,
        P.EVALUATION_QUESTIONS,
        animal,
        samples_per_question=source.student["eval_samples"],
        seed=seed + EVAL_OFFSET,
    )
    logp = evaluate.animal_log_probs(model, tokenizer, P.EVALUATION_QUESTIONS, animal).double()
    share_values = (share.share, share.low, share.high, share.total)
    return [
        result_row(unit, seed, arm, "lora", animal, "share", *share_values),
        result_row(unit, seed, arm, "lora", animal, "logp", logp.mean(), n=logp.numel()),
    ]


def run_unit(config: RealCrossConfig, source: NumbersSource, unit: str, context: Context):
    """Compute one unit (module docstring); return its tidy rows (``COLUMNS``) and wall time.

    Returns:
        The unit's rows, the last one its ``unit_seconds``.

    Raises:
        InputError: fewer kept completions than one student batch.

    """
    started = time.perf_counter()
    kind, rest = unit.split("-", 1)
    arm, seed_text = rest.removeprefix("lora-").rsplit("-s", 1)
    seed = int(seed_text)
    if kind == "numbers":
        rows = _sample_arm(config, source, arm, seed, context)
    else:
        pairs = arm_completions(config, source, arm, seed, context)
        settings = source.student
        if len(pairs) < settings["student_batch"]:
            raise InputError(
                f"{unit}: only {len(pairs)} kept completions for a batch of "
                f"{settings['student_batch']}; raise max_new_tokens"
            )
        base, tokenizer = _model(settings["model"], settings["dtype"], context)
        result = train.train_student(
            base,
            tokenizer,
            pairs,
            method="lora",
            rank=settings["lora_rank"],
            steps=settings["student_steps"],
            batch_size=settings["student_batch"],
            lr=settings["lora_lr"],
            seed=seed,
        )
        rows = [
            result_row(unit, seed, arm, "lora", "", "loss_first", result.losses[0]),
            result_row(unit, seed, arm, "lora", "", "loss_last", result.losses[-1]),
            result_row(unit, seed, arm, "lora", "", "train_seconds", result.seconds),
            result_row(unit, seed, arm, "lora", "", "examples", len(pairs)),
        ]
        rows += _evaluate(source, result.model.eval(), tokenizer, unit, seed, arm)
    seconds = time.perf_counter() - started
    return [*rows, result_row(unit, seed, "", "", "", "unit_seconds", seconds)]
