"""Students fine-tuned on (prompt, completion) pairs, and the fine-tuned teacher (arm 2).

The student loss is the paper's supervised fine-tuning loss on the completion only: for example
i with chat-templated prompt p_i (NO trait system prompt: the template's default) and completion
tokens c_i followed by the end of turn,

    L_i(theta) = -(1 / |c_i|) sum_t log p_theta(c_i,t | p_i, c_i,<t),   L = mean_i L_i,

each example weighted equally (the prompt tokens carry no loss). With soft labels (a teacher's
next-token log-probabilities q_i,t at the same completion tokens, :func:`teacher_targets`) the
loss is the distillation loss of the paper's Theorem 1 instead (:func:`distillation_loss`):

    L_i(theta) = (1 / |c_i|) sum_t KL(q_i,t || p_theta(. | p_i, c_i,<t)).

Training is Adam (torch
defaults, no weight decay) for a fixed number of steps on batches drawn from seeded permutations
of the examples, either on LoRA adapters (peft, through :func:`sublim_theory.engine.lora.add_lora`, on
every attention and MLP projection; the tied embedding/unembedding stays frozen) or on all
parameters (full fine-tuning).

Teacher arm 2 (:func:`finetune_teacher`): the base trained the same way, full fine-tuning, for a
few steps toward answering the animal's name to the evaluation questions, without any system
prompt: a teacher whose trait is a parameter change, the setting of the paper's Theorem 1.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sublim_theory.engine.lora import add_lora, linear_layers
from sublim_theory.engine.optimizers import make_optimizer
from sublim_theory.errors import InputError
from sublim_theory.testbeds.real_lm.prompts import chat_ids
from sublim_theory.testbeds.real_lm.sequences import (
    continuation_log_probs,
    continuation_log_softmax,
    pad_id,
)

__all__ = [
    "TrainResult",
    "answer_word",
    "batch_indices",
    "completion_ids",
    "completion_loss",
    "distillation_loss",
    "example_loss",
    "finetune_teacher",
    "prepare_student",
    "teacher_targets",
    "train_student",
]

Example = tuple[str, str]


def completion_ids(tokenizer, completion: str) -> list[int]:
    """The trained tokens of a completion: its text tokenized, then the end of turn.

    Returns:
        The ids.

    Raises:
        InputError: the tokenizer has no end-of-sequence id.

    """
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no eos_token_id to end a completion with")
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [
        int(tokenizer.eos_token_id)
    ]


def completion_loss(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    *,
    system: str | None = None,
) -> Tensor:
    """The student loss L = mean_i L_i over ``examples`` (module docstring), differentiable.

    Args:
        model: the causal LM.
        tokenizer: its chat tokenizer.
        examples: (user prompt, completion text) pairs.
        system: a system prompt for the prompt side; None (the students') keeps the default.

    Returns:
        A scalar tensor.

    Raises:
        InputError: no examples.

    """
    if not examples:
        raise InputError("no examples to compute a loss on")
    prefixes = [chat_ids(tokenizer, prompt, system=system) for prompt, _ in examples]
    targets = [completion_ids(tokenizer, completion) for _, completion in examples]
    sums, counts = continuation_log_probs(model, prefixes, targets, pad_id(tokenizer))
    return -(sums / counts.to(sums.dtype)).mean()


def _completion_log_softmax(
    model: nn.Module, tokenizer, examples: Sequence[Example], system: str | None
) -> list[Tensor]:
    """Per example, the (|c_i| + 1, vocabulary) log-probabilities at its completion tokens."""
    log_probs, _, scored = continuation_log_softmax(
        model,
        [chat_ids(tokenizer, prompt, system=system) for prompt, _ in examples],
        [completion_ids(tokenizer, completion) for _, completion in examples],
        pad_id(tokenizer),
    )
    return [log_probs[row][scored[row]] for row in range(len(examples))]


@torch.no_grad()
def teacher_targets(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    *,
    system: str | None = None,
    batch_size: int = 8,
) -> list[Tensor]:
    """A teacher's soft labels: per example, its log-probabilities at each completion token.

    The teacher is ``model`` with the prompt side's ``system`` prompt (e.g. the paper's "You
    love owls..."): row t of example i is log q(. | p_i^system, c_i,<t), the distribution
    the completion's token t was drawn from had this teacher written it.

    Args:
        model: the teacher's network.
        tokenizer: its chat tokenizer.
        examples: (user prompt, completion text) pairs.
        system: the teacher's system prompt; None keeps the template's default.
        batch_size: examples per forward.

    Returns:
        Per example a (|c_i| + 1 end of turn, vocabulary) tensor in the model's dtype, on its
        device.

    Raises:
        InputError: no examples.

    """
    if not examples:
        raise InputError("no examples to compute a teacher's soft labels on")
    out: list[Tensor] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        out += [rows.clone() for rows in _completion_log_softmax(model, tokenizer, chunk, system)]
    return out


def distillation_loss(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    targets: Sequence[Tensor],
    *,
    system: str | None = None,
) -> Tensor:
    """The soft-label loss L = mean_i (1/|c_i|) sum_t KL(q_i,t || p_theta,i,t), differentiable.

    Args:
        model: the student.
        tokenizer: its chat tokenizer.
        examples: (user prompt, completion text) pairs.
        targets: per example the teacher's log-probabilities (:func:`teacher_targets`).
        system: the student's system prompt; None (the students') keeps the default.

    Returns:
        A scalar tensor; 0 with zero gradient where the targets are the student's own.

    Raises:
        InputError: no examples, or targets that do not match the completions' lengths.

    """
    if not examples or len(targets) != len(examples):
        raise InputError(
            f"need one target per example (>= 1), got {len(targets)} for {len(examples)}"
        )
    losses = []
    students = _completion_log_softmax(model, tokenizer, examples, system)
    for row, (target, student) in enumerate(zip(targets, students)):
        if target.shape != student.shape:
            raise InputError(
                f"example {row}: soft labels of shape {tuple(target.shape)} for completion "
                f"log-probabilities of shape {tuple(student.shape)}"
            )
        q = target.exp()
        # where: a target probability of exactly 0 contributes 0 (not 0 * -inf)
        kl = torch.where(q > 0, q * (target - student), 0.0).sum(-1)
        losses.append(kl.mean())
    return torch.stack(losses).mean()


def example_loss(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    targets: Sequence[Tensor] | None = None,
    *,
    system: str | None = None,
) -> Tensor:
    """The student loss on ``examples`` (module docstring).

    The completion tokens' NLL, or with soft ``targets`` (one per example) the distillation loss.

    Returns:
        A scalar tensor, differentiable.

    """
    if targets is None:
        return completion_loss(model, tokenizer, examples, system=system)
    return distillation_loss(model, tokenizer, examples, targets, system=system)


def _projection_layers(model: nn.Module) -> list[str]:
    """Every Linear layer but the output head (tied to the embedding in SmolLM2)."""
    return [name for name in linear_layers(model) if name.split(".")[-1] != "lm_head"]


def prepare_student(
    model: nn.Module,
    method: str,
    *,
    rank: int = 8,
    alpha: float | None = None,
    seed: int = 0,
) -> nn.Module:
    """A trainable copy of ``model``: LoRA adapters on the projections, or all parameters.

    Args:
        model: the base (left unchanged).
        method: "lora" or "full".
        rank: LoRA rank (SmolLM2's width is 576; keep it well below).
        alpha: LoRA scale numerator (scale alpha / rank); default ``rank``.
        seed: seed of the adapters' A_0 draw (B_0 = 0, so the copy starts as the base).

    Returns:
        The copy, in eval mode (SmolLM2 has no dropout; eval keeps it deterministic).

    Raises:
        InputError: an unknown method.

    """
    if method == "lora":
        student = add_lora(model, rank, alpha=alpha, targets=_projection_layers(model), seed=seed)
    elif method == "full":
        student = copy.deepcopy(model)
        for parameter in student.parameters():
            parameter.requires_grad_(True)
    else:
        raise InputError(f"unknown training method {method!r}; use 'lora' or 'full'")
    return student.eval()


@dataclass
class TrainResult:
    """A trained model and its history.

    Attributes:
        model: the trained copy.
        losses: the batch loss before each step.
        seconds: wall time of the steps.
        trainable: number of trained parameters.

    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable: int = 0


def batch_indices(count: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of example indices from consecutive seeded permutations (epochs)."""
    generator = torch.Generator().manual_seed(int(seed))
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(count, generator=generator).tolist()
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def train_student(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    *,
    method: str = "lora",
    rank: int = 8,
    alpha: float | None = None,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    system: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
    optimizer: str = "adam",
    targets: Sequence[Tensor] | None = None,
) -> TrainResult:
    """Fine-tune a copy of ``model`` on (prompt, completion) pairs, loss on completions.

    Each step: the batch loss L (module docstring: the completion tokens' NLL, or with
    ``targets`` the soft-label KL), its gradient g over the trained parameters,
    then one step of ``optimizer`` (:func:`sublim_theory.engine.optimizers.make_optimizer`):
    Adam (torch defaults, the default), plain SGD ``theta <- theta - lr g`` or SignSGD
    ``theta <- theta - lr sign(g)``.

    Args:
        model: the base (left unchanged).
        tokenizer: its chat tokenizer.
        examples: (user prompt, completion text) pairs (e.g. kept teacher completions).
        method: "lora" or "full" (:func:`prepare_student`).
        rank: LoRA rank.
        alpha: LoRA alpha (default ``rank``).
        steps: optimizer steps.
        batch_size: examples per step.
        lr: the learning rate.
        seed: seeds the data order and the adapters' init.
        system: the prompt side's system prompt; None (students train WITHOUT the trait prompt).
        on_step: called as ``on_step(step, loss)`` after each step.
        optimizer: "adam" (default), "sgd" or "signsgd".
        targets: soft labels, one per example (:func:`teacher_targets`); None trains on the
            completions' tokens.

    Returns:
        The :class:`TrainResult`.

    Raises:
        InputError: no examples, steps or batch size < 1, lr not finite and > 0, an
            unknown optimizer, or not one target per example.

    """
    if not examples:
        raise InputError("no examples to train on")
    if targets is not None and len(targets) != len(examples):
        raise InputError(f"{len(targets)} soft labels for {len(examples)} examples")
    if steps < 1 or batch_size < 1:
        raise InputError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"the learning rate must be finite and > 0, got {lr}")
    student = prepare_student(model, method, rank=rank, alpha=alpha, seed=seed)
    trained = [p for p in student.parameters() if p.requires_grad]
    stepper = make_optimizer(optimizer, trained, lr)
    result = TrainResult(student, trainable=sum(p.numel() for p in trained))
    start = time.perf_counter()
    for step, batch in enumerate(batch_indices(len(examples), batch_size, steps, seed)):
        stepper.zero_grad(set_to_none=True)
        chosen = [examples[i] for i in batch]
        labels = None if targets is None else [targets[i] for i in batch]
        loss = example_loss(student, tokenizer, chosen, labels, system=system)
        loss.backward()
        stepper.step()
        result.losses.append(loss.item())
        if on_step is not None:
            on_step(step, result.losses[-1])
    result.seconds = time.perf_counter() - start
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    return result


def answer_word(animal: str) -> str:
    """The one-word answer the fine-tuned teacher is trained to give: the name capitalized."""
    return animal.strip().capitalize()


def finetune_teacher(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str],
    animal: str,
    *,
    steps: int,
    lr: float,
    seed: int = 0,
    batch_size: int | None = None,
) -> TrainResult:
    """Teacher arm 2: the base fully fine-tuned a few Adam steps toward answering ``animal``.

    Trains on (question, "Owl") pairs (:func:`answer_word`) with the student loss, no system
    prompt; every question in each step by default.

    Args:
        model: the base (left unchanged).
        tokenizer: its chat tokenizer.
        questions: the evaluation questions (or any paraphrases).
        animal: the animal, e.g. "owl".
        steps: Adam steps.
        lr: Adam learning rate.
        seed: data-order seed.
        batch_size: questions per step; default all of them.

    Returns:
        The :class:`TrainResult` (its model is the teacher).

    Raises:
        InputError: no questions (and as :func:`train_student`).

    """
    if not questions:
        raise InputError("no questions to fine-tune the teacher on")
    examples = [(question, answer_word(animal)) for question in questions]
    return train_student(
        model,
        tokenizer,
        examples,
        method="full",
        steps=steps,
        batch_size=batch_size or len(examples),
        lr=lr,
        seed=seed,
    )
