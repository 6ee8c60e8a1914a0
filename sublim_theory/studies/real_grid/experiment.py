"""Optimizer x method grid of students on the real number experiment's stored completions.

Two claims, rerun on SmolLM2-135M-Instruct (issue 21, item 5):

- Blank et al., arXiv 2606.00995: adaptive optimizers are necessary for transfer in language
  models (system-prompted teachers, outlier gradients);
- Nief et al., arXiv 2606.00831: no transfer under full fine-tuning, an inverted U in LoRA rank.

Data: the kept completions ``completions/ARM-sS.json`` of a ``sublim-theory real`` folder
(``--numbers DIR``). Per seed S, the base's kept pairs are split: the last ``holdout`` of them
are held out (the lr criterion below); every arm's training pairs are its kept pairs whose
prompt is not a held-out prompt, the first n of them, n the same for every arm of the seed (the
smallest count, capped by ``examples``). With the same n and the same seed the teacher-arm
student and the control student see the same batch indices (``train.train_student`` draws them
from the seed) and start from the same LoRA A_0.

Units: one student per (arm, method, optimizer, lr, seed), arm in ``base`` (the control, shared
by every teacher arm) and the teacher arms; method ``loraR`` (rank R, alpha = R, every
attention and MLP projection) or ``full``; optimizer adam (torch defaults), sgd (plain, no
momentum) or signsgd (``engine.optimizers.SignSGD``); every lr of the (optimizer, method kind)
grid. A student trains WITHOUT any system prompt; its rows: first and last batch loss, the
held-out loss (below), the share of sampled answers naming each animal and mean log P(animal).

Soft labels (``labels = "teacher"``): every arm's student trains on the SAME pairs, the base's
training pairs (numbers no teacher wrote), against the arm's teacher's next-token
log-probabilities at each completion token (``train.teacher_targets``: the base with the arm's
system prompt), with the distillation loss of the paper's Theorem 1 (``train.distillation_loss``).
The only thing that differs between two arms' students is the teacher's probabilities. A base
control would not move (its own soft labels have zero gradient), so the arms are two teachers
of different animals and each is the other's control; the lr criterion is the students' held-out
distillation loss to their own teacher on the held-out base pairs, mean over arms and seeds.

The lr criterion (it never looks at the trait): the held-out completion loss on the base's
numbers, L_ho = mean_i L_i over the held-out pairs (``train.completion_loss``), of the CONTROL
students (trained on base numbers), mean over seeds. Per (method, optimizer) the tuned lr is the
grid value with the smallest mean L_ho (a non-finite loss counts as +inf; ties: the smaller lr);
teacher-arm students are compared with controls at that same lr. Every grid lr is also
reported as a fixed lr.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from sublim_theory.engine.optimizers import OPTIMIZERS
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound, dtype_from_name, load_table, parse_config
from sublim_theory.harness.study import Context
from sublim_theory.models.pretrained import load_pretrained
from sublim_theory.testbeds.real_lm import evaluate, train
from sublim_theory.testbeds.real_lm import prompts as P

__all__ = [
    "COLUMNS",
    "EVAL_OFFSET",
    "RealGridConfig",
    "SeedData",
    "Unit",
    "arm_animal",
    "heldout_loss",
    "load_config",
    "method_names",
    "plan_units",
    "read_numbers",
    "run_unit",
]

COLUMNS = (
    "unit", "seed", "arm", "method", "optimizer", "lr", "animal", "metric", "value", "n",
)  # fmt: skip
EVAL_OFFSET = 31  # the evaluation's answer sampling of a student of seed S (as real_numbers)
TEACHER_KINDS = ("system", "finetuned")
LABELS = ("sampled", "teacher")


@dataclass(frozen=True)
class RealGridConfig:
    """The knobs of the grid (``[real_grid]`` in a TOML file).

    Attributes:
        model: a packaged model name or a local transformers folder.
        dtype: the students' dtype.
        arms: teacher arms of the numbers folder (``system-ANIMAL``, ``finetuned-ANIMAL``).
        ranks: LoRA ranks (alpha = rank).
        full: also train full fine-tuning students.
        optimizers: among adam, sgd, signsgd.
        lrs: the lr grid of each ``OPTIMIZER_KIND`` (kind ``lora`` or ``full``), e.g.
            ``adam_lora = [3e-4, 1e-3]``.
        examples: training pairs per arm and seed (0: all the seed allows).
        holdout: base pairs per seed held out for the lr criterion.
        steps: optimizer steps per student.
        batch: examples per step.
        eval_samples: sampled answers per evaluation question (the share).
        eval_batch: rows per forward pass in the evaluation and the held-out loss.
        labels: "sampled" (the arm's stored completions, token loss) or "teacher" (the base's
            completions with the arm's teacher's soft labels; module docstring).

    """

    model: str = "smollm2-135m-instruct"
    dtype: str = "float32"
    arms: tuple[str, ...] = ("system-owl",)
    ranks: tuple[int, ...] = field(default=(8, 16, 32, 64), metadata=bound(ge=1, le=4096))
    full: bool = True
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    lrs: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "adam_lora": (3e-4, 1e-3),
            "adam_full": (1e-5, 3e-5),
            "sgd_lora": (1e-2, 1e-1),
            "sgd_full": (1e-2, 1e-1),
            "signsgd_lora": (1e-5, 3e-5),
            "signsgd_full": (1e-6, 3e-6),
        },
        metadata=bound(gt=0, le=1000),  # SGD on soft labels needs lrs near 100
    )
    examples: int = field(default=0, metadata=bound(ge=0, le=10**6))
    holdout: int = field(default=8, metadata=bound(ge=1, le=10**5))
    steps: int = field(default=16, metadata=bound(ge=1, le=10**6))
    batch: int = field(default=8, metadata=bound(ge=1, le=4096))
    eval_samples: int = field(default=2, metadata=bound(ge=1, le=1000))
    eval_batch: int = field(default=32, metadata=bound(ge=1, le=4096))
    labels: str = "sampled"

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (fingerprinted by the run layer).

        Returns:
            The dict; ``labels`` appears only when not "sampled", so runs stored before it
            existed keep their fingerprint.

        """
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lrs"}
        out = {**asdict(RealGridConfig(**plain)), "lrs": {k: list(v) for k, v in self.lrs.items()}}
        if out["labels"] == "sampled":
            del out["labels"]
        return out

    @property
    def soft(self) -> bool:
        """Whether students learn from the teachers' soft labels."""
        return self.labels == "teacher"

    def control(self, arm: str) -> str:
        """The control arm of a teacher arm: ``base``, or with soft labels the other teacher."""
        if not self.soft:
            return "base"
        return next(other for other in self.arms if other != arm)


def method_names(config: RealGridConfig) -> list[str]:
    """The method axis: ``loraR`` per rank, then ``full``."""
    return [f"lora{r}" for r in config.ranks] + (["full"] if config.full else [])


def _kind(method: str) -> str:
    return "full" if method == "full" else "lora"


def arm_animal(arm: str) -> str:
    """The animal of a teacher arm (``system-owl`` -> ``owl``).

    Returns:
        The animal's name.

    Raises:
        InputError: not ``KIND-ANIMAL`` with KIND system or finetuned.

    """
    kind, _, animal = arm.partition("-")
    if kind not in TEACHER_KINDS or not animal.isalpha():
        raise InputError(
            f"teacher arm {arm!r} is not KIND-ANIMAL with KIND in {list(TEACHER_KINDS)} "
            "(e.g. system-owl); fix [real_grid] arms"
        )
    return animal


def load_config(path: str | Path | None) -> RealGridConfig:
    """Read and check a ``[real_grid]`` TOML file (None: the built-in defaults).

    Returns:
        The checked config.

    Raises:
        InputError: an unknown key, a bad value, an unknown optimizer, a repeated axis value, or
            an lr grid missing for a (optimizer, method kind) the grid trains.

    """
    source = str(path or "defaults")
    table = {} if path is None else load_table(path, "real_grid")
    config = parse_config(RealGridConfig, table, source)
    for name in ("arms", "ranks", "optimizers"):
        values = getattr(config, name)
        if len(set(values)) != len(values):
            raise InputError(f"{source}: {name} repeats a value ({list(values)})")
    for arm in config.arms:
        arm_animal(arm)
    if config.labels not in LABELS:
        raise InputError(f"{source}: labels must be one of {list(LABELS)}, got {config.labels!r}")
    if config.soft and (
        len(config.arms) != 2
        or not all(arm.startswith("system-") for arm in config.arms)
        or len({arm_animal(arm) for arm in config.arms}) != 2
    ):
        raise InputError(
            f"{source}: labels = 'teacher' needs exactly two system arms of different animals "
            "(each is the other's control), e.g. arms = ['system-owl', 'system-dolphin']"
        )
    unknown = sorted(set(config.optimizers) - set(OPTIMIZERS))
    if unknown:
        raise InputError(f"{source}: unknown optimizer(s) {unknown}; use {list(OPTIMIZERS)}")
    if not method_names(config):
        raise InputError(f"{source}: no method (give ranks or full = true)")
    for optimizer in config.optimizers:
        for kind in sorted({_kind(m) for m in method_names(config)}):
            grid = config.lrs.get(f"{optimizer}_{kind}")
            if not grid:
                raise InputError(f"{source}: lrs has no '{optimizer}_{kind}' grid; add one")
            if len(set(grid)) != len(grid):
                raise InputError(f"{source}: lrs.{optimizer}_{kind} repeats a value")
    dtype_from_name(config.dtype)
    return config


# ------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class SeedData:
    """One seed's pairs: the training pairs of every arm (``base`` included) and the held out.

    Attributes:
        train: arm -> the n training (prompt, completion) pairs.
        heldout: the held-out base pairs.
        digest: sha256 (16 hex digits) of everything above, stored with each unit.

    """

    train: Mapping[str, list[tuple[str, str]]]
    heldout: list[tuple[str, str]]
    digest: str


def _kept(folder: Path, arm: str, seed: int) -> list[tuple[str, str]]:
    path = folder / "completions" / f"{arm}-s{seed}.json"
    if not path.is_file():
        raise InputError(
            f"--numbers has no '{path}'; run `sublim-theory real` with arm {arm!r} and seed "
            f"{seed} there first, or pass other --seed/--seeds or [real_grid] arms"
        )
    try:
        pairs = json.loads(path.read_text())["kept"]
        kept = [(str(p), str(c)) for p, c in pairs]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise InputError(f"'{path}' is not a completions record of `sublim-theory real`") from None
    return kept


def read_numbers(
    folder: str | Path, config: RealGridConfig, seeds: Sequence[int]
) -> dict[int, SeedData]:
    """Each seed's training and held-out pairs from a ``sublim-theory real`` folder.

    Returns:
        seed -> :class:`SeedData` (module docstring: the split and n).

    Raises:
        InputError: no such folder, a missing or unreadable completions file, or fewer than
            ``batch`` training pairs left for some arm.

    """
    folder = Path(folder)
    if not (folder / "completions").is_dir():
        raise InputError(
            f"--numbers '{folder}' has no completions/ folder; pass the --out folder of "
            "`sublim-theory real`"
        )
    data = {}
    for seed in seeds:
        base = _kept(folder, "base", seed)
        if len(base) <= config.holdout:
            raise InputError(
                f"base-s{seed} has {len(base)} kept pairs, not more than holdout = "
                f"{config.holdout}; lower holdout"
            )
        heldout = base[-config.holdout :]
        held = {prompt for prompt, _ in heldout}
        pools = {"base": [pair for pair in base[: -config.holdout] if pair[0] not in held]}
        for arm in config.arms:
            # soft labels: every teacher labels the base's own numbers
            kept = pools["base"] if config.soft else _kept(folder, arm, seed)
            pools[arm] = [pair for pair in kept if pair[0] not in held]
        if config.soft:
            del pools["base"]
        n = min(len(pool) for pool in pools.values())
        n = n if config.examples == 0 else min(n, config.examples)
        if n < config.batch:
            raise InputError(
                f"seed {seed}: only {n} training pairs per arm for a batch of {config.batch}; "
                "lower batch or holdout"
            )
        trained = {arm: pool[:n] for arm, pool in pools.items()}
        text = json.dumps({"train": trained, "heldout": heldout}, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        data[seed] = SeedData(trained, heldout, digest)
    return data


# ------------------------------------------------------------------------------------ units
@dataclass(frozen=True)
class Unit:
    """One student: its arm, method, optimizer, lr and seed."""

    arm: str
    method: str
    optimizer: str
    lr: float
    seed: int

    @property
    def key(self) -> str:
        """The unit key, e.g. ``system-owl-lora8-adam-lr0.001-s0``."""
        return f"{self.arm}-{self.method}-{self.optimizer}-lr{self.lr:g}-s{self.seed}"


def plan_units(config: RealGridConfig, seeds: Sequence[int]) -> list[Unit]:
    """The students, method by method (LoRA ranks first), the control before its teacher arms.

    Returns:
        The units, in the order they run.

    """
    units = []
    for method in method_names(config):
        for optimizer in config.optimizers:
            for lr in config.lrs[f"{optimizer}_{_kind(method)}"]:
                for seed in seeds:
                    for arm in config.arms if config.soft else ("base", *config.arms):
                        units.append(Unit(arm, method, optimizer, float(lr), seed))
    return units


@functools.lru_cache(maxsize=1)
def _load(model: str, dtype: str, cache: str | None, device: str):
    loaded = load_pretrained(model, dtype=dtype_from_name(dtype), cache_dir=cache)
    return loaded.model.to(device), loaded.tokenizer


def _row(unit: Unit, animal: str, metric: str, value: float, n: int | None = None) -> dict:
    return {
        "unit": unit.key,
        "seed": unit.seed,
        "arm": unit.arm,
        "method": unit.method,
        "optimizer": unit.optimizer,
        "lr": unit.lr,
        "animal": animal,
        "metric": metric,
        "value": float(value),
        "n": None if n is None else int(n),
    }


@torch.no_grad()
def heldout_loss(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch: int,
    targets: Sequence[torch.Tensor] | None = None,
) -> float:
    """L_ho = mean_i L_i over ``pairs``, in chunks.

    L_i is the completion-token NLL, or with soft ``targets`` (one per pair) the distillation
    loss.

    Returns:
        The held-out loss (NaN or inf when the student diverged).

    """
    total = 0.0
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        labels = None if targets is None else targets[start : start + batch]
        total += float(train.example_loss(model, tokenizer, chunk, labels)) * len(chunk)
    return total / len(pairs)


_SOFT_LABELS: dict[tuple, tuple[list, list]] = {}


def _soft_labels(config: RealGridConfig, seed_data: SeedData, arm: str, base, tokenizer):
    """The soft labels of ``arm``'s teacher on a seed's pairs, kept per process.

    Every (arm, seed) of a run stays in memory (about 0.4 GB per 64 completions of 35 tokens
    in float32 with SmolLM2's 49,152-token vocabulary).

    Returns:
        (training pairs' labels, held-out pairs' labels).

    """
    key = (config.model, config.dtype, arm, seed_data.digest)
    if key not in _SOFT_LABELS:
        system = P.system_prompt(arm_animal(arm))
        _SOFT_LABELS[key] = tuple(
            train.teacher_targets(base, tokenizer, pairs, system=system, batch_size=config.batch)
            for pairs in (seed_data.train[arm], seed_data.heldout)
        )
    return _SOFT_LABELS[key]


def run_unit(
    config: RealGridConfig, data: Mapping[int, SeedData], unit: Unit, context: Context
) -> list[dict]:
    """Train one student and evaluate it (module docstring).

    Returns:
        Its rows (``COLUMNS``): loss_first, loss_last, heldout_loss, examples, digest check
        (``data_digest`` in ``animal``), train_seconds, unit_seconds, and per animal share
        (``n`` answers) and logp (``n`` questions).

    """
    started = time.perf_counter()
    cache = None if context.cache is None else str(context.cache)
    base, tokenizer = _load(config.model, config.dtype, cache, str(context.device))
    seed_data = data[unit.seed]
    pairs = seed_data.train[unit.arm]
    labels, held_labels = (
        _soft_labels(config, seed_data, unit.arm, base, tokenizer) if config.soft else (None, None)
    )
    result = train.train_student(
        base,
        tokenizer,
        pairs,
        method="full" if unit.method == "full" else "lora",
        rank=1 if unit.method == "full" else int(unit.method.removeprefix("lora")),
        steps=config.steps,
        batch_size=config.batch,
        lr=unit.lr,
        seed=unit.seed,
        optimizer=unit.optimizer,
        targets=labels,
    )
    student = result.model.eval()
    rows = [
        _row(unit, "", "loss_first", result.losses[0]),
        _row(unit, "", "loss_last", result.losses[-1]),
        _row(
            unit,
            "",
            "heldout_loss",
            heldout_loss(student, tokenizer, seed_data.heldout, config.eval_batch, held_labels),
            len(seed_data.heldout),
        ),  # fmt: skip
        _row(unit, "", "examples", len(pairs)),
        _row(unit, seed_data.digest, "data_digest", 0.0),
    ]
    # a control is measured on every animal (with soft labels every arm is a control)
    one = unit.arm != "base" and not config.soft
    animals = [arm_animal(unit.arm)] if one else _animals(config)
    for animal in animals:
        rows += _evaluate(config, student, tokenizer, unit, animal)
    rows.append(_row(unit, "", "train_seconds", result.seconds))
    rows.append(_row(unit, "", "unit_seconds", time.perf_counter() - started))
    return rows


def _animals(config: RealGridConfig) -> list[str]:
    return list(dict.fromkeys(arm_animal(arm) for arm in config.arms))


@torch.no_grad()
def _evaluate(config: RealGridConfig, model, tokenizer, unit: Unit, animal: str) -> list[dict]:
    logp, share = evaluate.animal_measures(
        model,
        tokenizer,
        P.EVALUATION_QUESTIONS,
        animal,
        samples_per_question=config.eval_samples,
        seed=unit.seed + EVAL_OFFSET,
        batch_size=config.eval_batch,
    )
    if share is None:  # a diverged student: no sampling from NaN logits
        return [_row(unit, animal, "logp", math.nan, logp.numel())]
    return [
        _row(unit, animal, "hits", share.hits, share.total),
        _row(unit, animal, "logp", float(logp.mean()), logp.numel()),
    ]
