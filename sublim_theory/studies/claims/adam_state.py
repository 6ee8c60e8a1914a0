"""Xu (arXiv 2608.20442), "the trait is stored in Adam's state", on the tiny LM.

Per seed ``s``: the base ``B`` (``training.cached_base``, seeds s, s, s, as ``numbers``) and the
teacher ``T`` = B fine-tuned with Adam on ``BOS Q trait EOS`` exactly as
``training.finetune_teacher`` (same loop, same lr and steps), keeping the teacher's Adam state
after t_T steps: per parameter the first moment ``m_T``, the second moment ``v_T``, the counter
t_T. A fresh student at B (the base's parameters; NOT the teacher's) gets an Adam optimizer whose
state holds

* ``neither``: m = 0, v = 0 (the control);
* ``first``: m = m_T, v = 0;
* ``second``: m = 0, v = v_T;
* ``both``: m = m_T, v = v_T;

with the counter set by ``[adam_state] step_count`` (``teacher``: t_T in every arm; ``fresh``:
0 in every arm). It then takes k source-free steps: Adam on the base's own filtered number
samples (the ``control`` data of ``numbers``: no teacher data), the same batch order in every
arm. torch's Adam (``torch.optim.Adam``, beta = (0.9, 0.999), eps_a = 1e-8) updates, at counter
t after the increment,

    m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2,
    theta <- theta - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps_a).

The trait is read at every checkpoint k (k = 0 is the cut: the parameters are B's in every arm,
so every paired difference is 0 there by construction) as log P(trait | BOS Q) and P(trait),
the finetune study's measure. Where a coordinate's gradient is 0 on number data (the
embeddings of Q and of the animal tokens) and v = 0, the ``first`` arm moves it by
lr * m_hat / eps_a per step: the rows record the largest |theta - theta_B| so such steps show.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sublim_theory.errors import InputError
from sublim_theory.studies.numbers.experiment import STUDENT_OFFSET, sampled_numbers
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import NumbersConfig

__all__ = [
    "ARMS",
    "AdamState",
    "number_loss",
    "run_seed",
    "source_free_steps",
    "teacher_with_state",
    "trait_log_probability",
    "transplant",
]

ARMS = ("neither", "first", "second", "both")
Row = dict[str, object]


@dataclass
class AdamState:
    """The teacher's Adam state after its fine-tune: per parameter (in ``parameters()`` order)."""

    first: list[Tensor]
    second: list[Tensor]
    step: int


def teacher_with_state(base: nn.Module, config: NumbersConfig) -> tuple[nn.Module, AdamState]:
    """``training.finetune_teacher``, returning the teacher AND its Adam moments.

    Returns:
        (teacher in eval mode, its optimizer's ``exp_avg``, ``exp_avg_sq`` and step count).

    """
    teacher, optimizer = training.finetune_teacher_and_optimizer(base, config)
    params = list(teacher.parameters())
    state = AdamState(
        [optimizer.state[p]["exp_avg"].detach().clone() for p in params],
        [optimizer.state[p]["exp_avg_sq"].detach().clone() for p in params],
        config.teacher.steps,
    )
    return teacher, state


def transplant(
    model: nn.Module, state: AdamState, arm: str, lr: float, step_count: str
) -> torch.optim.Adam:
    """A ``torch.optim.Adam`` over ``model``'s parameters holding the moments ``arm`` names.

    Args:
        model: the student (its parameters in the teacher's ``parameters()`` order and shapes).
        state: the teacher's moments.
        arm: ``neither``, ``first``, ``second`` or ``both`` (module docstring).
        lr: the student's learning rate.
        step_count: ``teacher`` (counter t_T) or ``fresh`` (counter 0).

    Returns:
        The optimizer, its state set for the arm.

    Raises:
        InputError: an unknown arm or step count, or a state of other shapes.

    """
    if arm not in ARMS:
        raise InputError(f"unknown Adam-state arm '{arm}'; choose from {list(ARMS)}")
    if step_count not in ("teacher", "fresh"):
        raise InputError(f"step_count must be 'teacher' or 'fresh', got {step_count!r}")
    params = list(model.parameters())
    shapes = [tuple(p.shape) for p in params]
    if shapes != [tuple(m.shape) for m in state.first] or len(state.second) != len(params):
        raise InputError("the transplanted Adam state does not match the student's parameters")
    optimizer = torch.optim.Adam(params, lr=lr)
    counter = state.step if step_count == "teacher" else 0
    for p, m, v in zip(params, state.first, state.second):
        keep_m, keep_v = arm in ("first", "both"), arm in ("second", "both")
        optimizer.state[p] = {
            "step": torch.tensor(float(counter)),
            "exp_avg": (m.clone() if keep_m else torch.zeros_like(p)).to(p.dtype),
            "exp_avg_sq": (v.clone() if keep_v else torch.zeros_like(p)).to(p.dtype),
        }
    return optimizer


def trait_log_probability(model: nn.Module, config: NumbersConfig) -> float:
    """The log P(trait | BOS Q) under the full softmax, in float64 (``training.trait_probability``)."""
    trait = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    with torch.no_grad():
        logits = model(corpus.question_prompt())[0, -1].double()
    return float(torch.log_softmax(logits, -1)[trait])


def number_loss(model: nn.Module, batch: Tensor, config: NumbersConfig) -> Tensor:
    """The sampled-label student loss of ``training.train_student`` (continuation and EOS)."""
    mask = corpus.continuation_mask(batch[:1], config.corpus)[0]
    logits = model(batch[:, :-1])[:, mask]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:][:, mask].reshape(-1))


def source_free_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Tensor,
    config: NumbersConfig,
    seed: int,
    checkpoints: tuple[int, ...],
    read: Callable[[nn.Module, int], None],
) -> None:
    """Train ``model`` in place on ``data`` for ``checkpoints[-1]`` steps; ``read`` at each one.

    Batches of ``[student] batch_size`` rows drawn by a generator seeded ``seed`` (the same
    order in every arm). ``read(model, k)`` is called in eval mode after k steps for each k in
    ``checkpoints`` (k = 0: before any step).
    """
    generator = torch.Generator().manual_seed(seed)
    wanted = set(checkpoints)
    for k in range(checkpoints[-1] + 1):
        if k in wanted:
            model.eval()
            read(model, k)
        if k == checkpoints[-1]:
            break
        model.train()
        rows = torch.randint(0, data.shape[0], (config.student.batch_size,), generator=generator)
        loss = number_loss(model, data[rows], config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def run_seed(
    config: NumbersConfig,
    checkpoints: tuple[int, ...],
    lr: float,
    step_count: str,
    seed: int,
    cache_dir,
    log: Callable = print,
) -> list[Row]:
    """Every arm of one seed: rows ``seed, arm, k, log_p, p, max_shift`` plus base and teacher.

    ``max_shift`` is max |theta - theta_B| over every coordinate (0 at the cut).

    Returns:
        The rows of the seed.

    """
    base, _ = training.cached_base(config, training.BaseSpec(seed, seed, seed), cache_dir, log)
    teacher, state = teacher_with_state(base, config)
    data = sampled_numbers(base, config, seed)[0]
    theta_base = training.flat(base)
    rows: list[Row] = []
    for role, model in (("base", base), ("teacher", teacher)):
        log_p = trait_log_probability(model, config)
        rows.append(
            {
                "seed": seed,
                "arm": role,
                "k": 0,
                "log_p": log_p,
                "p": math.exp(log_p),
                "max_shift": float((training.flat(model) - theta_base).abs().max()),
            }
        )
    for arm in ARMS:
        student = copy.deepcopy(base)
        optimizer = transplant(student, state, arm, lr, step_count)

        def read(model: nn.Module, k: int, arm: str = arm) -> None:
            log_p = trait_log_probability(model, config)
            shift = (training.flat(model) - theta_base).abs().max()
            rows.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "k": k,
                    "log_p": log_p,
                    "p": math.exp(log_p),
                    "max_shift": float(shift),
                }
            )

        source_free_steps(
            student, optimizer, data, config, seed + STUDENT_OFFSET, checkpoints, read
        )
    return rows
