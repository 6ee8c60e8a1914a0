"""Students of the numbers experiment across optimizers and parameterizations (full or LoRA).

One *cell* is an (optimizer, parameterization) pair: optimizer ``adam``, ``sgd`` or ``signsgd``
(``training.SignSGD``), parameterization ``full`` (every weight trains) or ``r<k>`` (rank-k LoRA
adapters on every Linear layer, base frozen, ``sublim_theory.engine.lora.add_lora``). Per seed ``s`` the
base, the teacher and both number samples are exactly those of ``experiment.run_seed`` (same
seeds, same offsets), made once and shared by every cell. In each cell the *student* trains on
teacher numbers and its paired *control* on base numbers, from the same init (for LoRA the very
same adapted module, so the same ``A_0``) with the same optimizer, learning rate, steps and batch
order; the effect is the paired difference of P(trait).

At every step the cosine between the gradient of the trait loss ``L_trait = -log P(trait | BOS Q)``
(the quantity ``training.trait_probability`` reads) and the gradient of the distillation loss is
recorded, both in the space of the trainable parameters (adapter space for LoRA): a positive value
means a small gradient step on the numbers lowers the trait loss.

Each cell's learning rate is chosen on a grid with one seed by the student's final distillation
loss on held-out teacher numbers (fresh prompts, never trained on), not by transfer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sublim_theory.engine.alignment import cosine
from sublim_theory.engine.lora import add_lora
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound, load_toml, parse_config
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.harness.study import MAX_SEED
from sublim_theory.studies.numbers.experiment import PROMPT_OFFSET, SAMPLING_OFFSET, STUDENT_OFFSET
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import (
    COUNT,
    MAX_SIZE,
    RATE,
    SIZE,
    NumbersConfig,
    from_dict,
)

__all__ = [
    "HELDOUT_OFFSET",
    "LORA_OFFSET",
    "OPTIMIZERS",
    "Cell",
    "FinetuneConfig",
    "SeedData",
    "cell_init",
    "cells",
    "heldout_loss",
    "load_config",
    "prepare_seed",
    "run_seed",
    "select_learning_rates",
    "third_means",
    "train_pair",
    "trait_gradient_cosine",
    "trait_loss",
]

OPTIMIZERS = ("adam", "sgd", "signsgd")
LORA_OFFSET = OFFSETS["lm.lora"]  # the adapters' A_0 (shared by the student and its control)
HELDOUT_OFFSET = OFFSETS["lm.heldout"]  # the held-out prompts (and their sampling)

Row = dict[str, Any]


@dataclass(frozen=True)
class FinetuneConfig:
    """The ``[finetune]`` table: the cells, the learning-rate grids and the held-out set."""

    optimizers: tuple[str, ...] = OPTIMIZERS
    ranks: tuple[int, ...] = field(default=(1, 4, 16, 64), metadata=SIZE)
    full: bool = True
    lora_alpha: float | None = field(default=None, metadata=bound(gt=0, le=MAX_SIZE))
    lr_grid_adam: tuple[float, ...] = field(default=(1e-3, 3e-3, 1e-2), metadata=RATE)
    lr_grid_sgd: tuple[float, ...] = field(default=(0.3, 1.0, 3.0), metadata=RATE)
    lr_grid_signsgd: tuple[float, ...] = field(default=(3e-4, 1e-3, 3e-3), metadata=RATE)
    select_seed: int = field(default=0, metadata=bound(ge=0, lt=MAX_SEED))
    heldout: int = field(default=2000, metadata=COUNT)

    def grid(self, optimizer: str) -> tuple[float, ...]:
        """The learning rates tried for ``optimizer``."""
        return getattr(self, f"lr_grid_{optimizer}")


@dataclass(frozen=True)
class Cell:
    """One (optimizer, parameterization) pair; ``rank`` is None for full fine-tuning."""

    optimizer: str
    rank: int | None

    @property
    def parameterization(self) -> str:
        """``full`` or ``r<rank>``."""
        return "full" if self.rank is None else f"r{self.rank}"

    @property
    def name(self) -> str:
        """``<optimizer>/<parameterization>``, the key of the cell in tables and files."""
        return f"{self.optimizer}/{self.parameterization}"


def cells(ft: FinetuneConfig) -> list[Cell]:
    """Every cell of the design, optimizer-major, full fine-tuning first."""
    ranks = ([None] if ft.full else []) + list(ft.ranks)
    return [Cell(o, r) for o in ft.optimizers for r in ranks]


def load_config(path) -> tuple[NumbersConfig, FinetuneConfig]:
    """Read a finetune TOML: the numbers tables (``[model]`` .. ``[student]``) plus ``[finetune]``.

    ``path`` None gives the numbers defaults and the default design.

    Returns:
        ``(the numbers config, the finetune settings)``.

    Raises:
        InputError: an unknown table or key, a bad value, an unknown optimizer, repeated ranks.

    """
    raw = dict(load_toml(path)) if path is not None else {}
    source = str(path or "defaults")
    ft = parse_config(FinetuneConfig, raw.pop("finetune", {}), f"{source} [finetune]")
    unknown = sorted(set(ft.optimizers) - set(OPTIMIZERS))
    if unknown or len(set(ft.optimizers)) != len(ft.optimizers):
        raise InputError(
            f"{source} [finetune] optimizers must be distinct names from {list(OPTIMIZERS)}, "
            f"got {list(ft.optimizers)}"
        )
    if len(set(ft.ranks)) != len(ft.ranks):
        raise InputError(f"{source} [finetune] ranks must be distinct, got {list(ft.ranks)}")
    config = from_dict(raw, source=source)
    # a rank above min(in, out) of an adapted layer adds no direction that rank lacks there (the
    # product B A already reaches every matrix of that shape): refused rather than silently capped
    with torch.random.fork_rng(devices=[]):  # build_lm seeds the global generator
        layers = [m for m in training.build_lm(config, 0).modules() if isinstance(m, nn.Linear)]
    smallest = min(min(m.in_features, m.out_features) for m in layers)
    too_big = [r for r in ft.ranks if r > smallest]
    if too_big:
        raise InputError(
            f"{source} [finetune] ranks {too_big} exceed {smallest}, the smallest dimension of "
            "an adapted layer ([model] d_model); use ranks <= that"
        )
    return config, ft


# --------------------------------------------------------------------------------------------
# the measurements
# --------------------------------------------------------------------------------------------
def trait_loss(model: nn.Module, config: NumbersConfig) -> Tensor:
    """``-log P(trait animal | BOS Q)`` (full softmax, last position), differentiable."""
    trait = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    logits = model(corpus.question_prompt())[0, -1]
    return -torch.log_softmax(logits, -1)[trait]


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trait_gradient_cosine(model: nn.Module, config: NumbersConfig) -> float:
    """cos(grad L_trait, grad L_distill) over the trainable parameters, in float64.

    ``grad L_distill`` is read from the parameters' ``.grad`` (call it after the backward pass
    of the distillation loss); ``.grad`` is not changed.

    Returns:
        The cosine.

    """
    params = _trainable(model)
    grads = torch.autograd.grad(trait_loss(model, config), params, allow_unused=True)
    trait = torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]
    )
    distill = torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]
    )
    return cosine(trait.double(), distill.double())


def heldout_loss(model: nn.Module, sequences: Tensor, config: NumbersConfig) -> float:
    """The sampled-label distillation loss (continuation tokens and EOS) on ``sequences``."""
    mask = corpus.continuation_mask(sequences[:1], config.corpus)[0]
    with torch.no_grad():
        logits = model(sequences[:, :-1])[:, mask]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(), sequences[:, 1:][:, mask].reshape(-1)
        )
    return float(loss)


def third_means(values: list[float]) -> tuple[float, float, float]:
    """Means over the early, mid and late thirds of a per-step series (split by ``array_split``)."""
    if len(values) < 3:
        raise InputError(f"a per-step series needs >= 3 steps for thirds, got {len(values)}")
    parts = torch.tensor(values, dtype=torch.float64).tensor_split(3)
    return tuple(float(part.mean()) for part in parts)


# --------------------------------------------------------------------------------------------
# data of one seed, and one cell
# --------------------------------------------------------------------------------------------
@dataclass
class SeedData:
    """What every cell of one seed shares: models, number samples, held-out samples."""

    seed: int
    base: nn.Module
    teacher: nn.Module
    teacher_numbers: Tensor
    control_numbers: Tensor
    heldout_teacher: Tensor
    heldout_control: Tensor


def prepare_seed(
    config: NumbersConfig, ft: FinetuneConfig, seed: int, cache_dir, log: Callable = print
) -> SeedData:
    """The base (cached), the teacher, the filtered samples of ``experiment.run_seed``, held-out.

    The held-out sets continue ``ft.heldout`` fresh prompts (teacher and base), filtered.

    Returns:
        The seed's data.

    """
    base, _ = training.cached_base(config, training.BaseSpec(seed, seed, seed), cache_dir, log)
    teacher = training.finetune_teacher(base, config)
    samples = {}
    for name, n, offset in (("train", config.teacher.n_sequences, 0), ("heldout", ft.heldout, 1)):
        prompt_seed = seed + PROMPT_OFFSET + offset * HELDOUT_OFFSET
        prompts = corpus.number_prompts(config.corpus, n, prompt_seed)
        for who, model in (("teacher", teacher), ("base", base)):
            sampling_seed = seed + SAMPLING_OFFSET + offset * HELDOUT_OFFSET
            raw = training.sample_continuations(model, prompts, config, sampling_seed)
            samples[(name, who)] = corpus.filter_numbers(raw, config.corpus)[0]
    return SeedData(
        seed,
        base,
        teacher,
        samples[("train", "teacher")],
        samples[("train", "base")],
        samples[("heldout", "teacher")],
        samples[("heldout", "base")],
    )


def cell_init(base: nn.Module, cell: Cell, seed: int, ft: FinetuneConfig) -> nn.Module:
    """The init of a cell: the base itself, or a rank-r LoRA copy with ``A_0`` drawn from seed."""
    if cell.rank is None:
        return base
    return add_lora(base, cell.rank, alpha=ft.lora_alpha, seed=seed + LORA_OFFSET)


def _train(
    init: nn.Module, data: Tensor, config: NumbersConfig, cell: Cell, lr: float, seed: int
) -> tuple[training.StudentRun, list[float]]:
    student = dataclasses.replace(config.student, optimizer=cell.optimizer, lr=lr, labels="sampled")
    cosines: list[float] = []
    run = training.train_student(
        init,
        data,
        config,
        seed + STUDENT_OFFSET,
        student=student,
        step_callback=lambda model, batch: cosines.append(trait_gradient_cosine(model, config)),
    )
    return run, cosines


def train_pair(
    data: SeedData, cell: Cell, lr: float, config: NumbersConfig, ft: FinetuneConfig
) -> tuple[list[Row], list[Row]]:
    """Train a cell's student (teacher numbers) and control (base numbers) from one init.

    Returns (rows, step_rows): tidy ``{seed, cell, optimizer, parameterization, role, metric,
    value}`` rows for ``student``, ``control`` and ``paired`` (student minus control), and
    per-step ``{seed, cell, role, step, trait_cos, loss}`` rows.

    Returns:
        ``(rows, step rows)`` of the pair.

    """
    init = cell_init(data.base, cell, data.seed, ft)
    rows: list[Row] = []
    steps: list[Row] = []
    key = {"seed": data.seed, "cell": cell.name, "optimizer": cell.optimizer}
    key["parameterization"] = cell.parameterization

    def put(role: str, metric: str, value: float) -> None:
        rows.append({**key, "role": role, "metric": metric, "value": float(value)})

    measured = {}
    for role, numbers, heldout in (
        ("student", data.teacher_numbers, data.heldout_teacher),
        ("control", data.control_numbers, data.heldout_control),
    ):
        t0 = time.perf_counter()
        run, cosines = _train(init, numbers, config, cell, lr, data.seed)
        early, mid, late = third_means(cosines)
        values = {
            "p_trait": training.trait_probability(run.model, config),
            "p_trait_among_animals": training.trait_probability_among_animals(run.model, config),
            "heldout_loss": heldout_loss(run.model, heldout, config),
            "final_loss": run.losses[-1],
            "mean_trait_cos": sum(cosines) / len(cosines),
            "trait_cos_early": early,
            "trait_cos_mid": mid,
            "trait_cos_late": late,
            "frac_positive_trait_cos": sum(c > 0 for c in cosines) / len(cosines),
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        for metric, value in values.items():
            put(role, metric, value)
        measured[role] = values
        for i, (c, loss) in enumerate(zip(cosines, run.losses)):
            steps.append({**key, "role": role, "step": i + 1, "trait_cos": c, "loss": loss})
    for metric in ("p_trait", "p_trait_among_animals", "mean_trait_cos"):
        put("paired", f"diff_{metric}", measured["student"][metric] - measured["control"][metric])
    return rows, steps


# --------------------------------------------------------------------------------------------
# learning-rate selection and one seed
# --------------------------------------------------------------------------------------------
def select_learning_rates(
    data: SeedData, config: NumbersConfig, ft: FinetuneConfig, log: Callable = print
) -> tuple[dict[str, float], list[Row]]:
    """Per cell, the grid learning rate whose student has the lowest held-out distillation loss.

    Only the student on teacher numbers trains (no control, no transfer read). A non-finite loss
    (divergence) never wins.

    Returns:
        ``({cell name: lr}, grid rows {seed, cell, lr, heldout_loss, final_loss})``.

    Raises:
        InputError: every learning rate of a cell diverged (lower the grid).

    """
    chosen, rows = {}, []
    for cell in cells(ft):
        init = cell_init(data.base, cell, data.seed, ft)
        best = None
        for lr in ft.grid(cell.optimizer):
            student = dataclasses.replace(
                config.student, optimizer=cell.optimizer, lr=lr, labels="sampled"
            )
            run = training.train_student(
                init, data.teacher_numbers, config, data.seed + STUDENT_OFFSET, student=student
            )
            loss = heldout_loss(run.model, data.heldout_teacher, config)
            rows.append(
                {
                    "seed": data.seed,
                    "cell": cell.name,
                    "lr": lr,
                    "heldout_loss": loss,
                    "final_loss": run.losses[-1],
                }
            )
            log(f"lr grid {cell.name} lr={lr:g}: held-out loss {loss:.4f}")
            if torch.isfinite(torch.tensor(loss)) and (best is None or loss < best[1]):
                best = (lr, loss)
        if best is None:
            raise InputError(
                f"every learning rate of {cell.name} diverged; lower [finetune] "
                f"lr_grid_{cell.optimizer}"
            )
        chosen[cell.name] = best[0]
    return chosen, rows


def run_seed(
    data: SeedData,
    lrs: dict[str, float],
    config: NumbersConfig,
    ft: FinetuneConfig,
    log: Callable = print,
) -> tuple[list[Row], list[Row]]:
    """Every cell of one seed (its student and control); returns (rows, step_rows).

    Also rows for the base and the teacher (``cell`` = ``-``): P(trait) and its among-animals form.

    Returns:
        ``(rows, step rows)``.

    Raises:
        InputError: a cell without a learning rate in ``lrs``.

    """
    rows: list[Row] = []
    for role, model in (("base", data.base), ("teacher", data.teacher)):
        for metric, value in (
            ("p_trait", training.trait_probability(model, config)),
            ("p_trait_among_animals", training.trait_probability_among_animals(model, config)),
        ):
            rows.append(
                {
                    "seed": data.seed,
                    "cell": "-",
                    "optimizer": "-",
                    "parameterization": "-",
                    "role": role,
                    "metric": metric,
                    "value": value,
                }
            )
    steps: list[Row] = []
    for cell in cells(ft):
        if cell.name not in lrs:
            raise InputError(f"no learning rate for cell {cell.name}; rerun the selection")
        cell_rows, cell_steps = train_pair(data, cell, lrs[cell.name], config, ft)
        rows += cell_rows
        steps += cell_steps
        diff = next(r["value"] for r in cell_rows if r["metric"] == "diff_p_trait")
        log(f"seed {data.seed} {cell.name} lr={lrs[cell.name]:g}: paired diff {diff:+.4f}")
    return rows, steps
