"""The alignment theorem on a real pretrained chat LLM (SmolLM2-135M-Instruct by default).

The setting of theory/alignment.md, mapped onto a causal language model:

* the network f(theta, x): the model's next-token logits at the scored positions of a token
  sequence x (:class:`CompletionLogits`), shape (N, C, V);
* the teacher: theta_T = theta_0 + eps v, with v the displacement after ``steps`` Adam steps
  (or v = -grad L_T, one plain gradient step) on the trait loss

      L_T(theta) = mean_q -log softmax(f(theta, x_q))[animal],

  x_q a chat-templated question ("Name your favorite animal using only one word.") and
  ``animal`` the first token of the answer ("owl");
* the student: one step of distillation from theta_0 on number completions x ~ D_S (a short
  chat prompt with three seed numbers, then C completion tokens in the paper's answer format
  "629, 937, ..."), imitating the teacher's logits on the same tokens with the KL loss,
  on the completion tokens only:

      dtheta_S = -grad_theta E_{x, t in completion} KL(softmax f(theta_T, x)_t || softmax f(theta, x)_t).

The theorem's quantities (A, B, the cosines of the exact and first-order updates with v, eps*)
come from the engine's :func:`sublim_theory.engine.report.alignment_report` unchanged: the only
adapter is :class:`CompletionLogits`, which turns "token ids plus the positions to score" into
the engine's ``inputs -> outputs (N, ..., k)`` and so restricts the loss to completion tokens
(every scored position has equal weight, as in the engine's mean over positions). LoRA
(``lora_rank``) puts peft adapters on every attention and MLP projection; v and the student then
live in adapter space (at B_0 = 0 the A-factors get no gradient, so only the B-factors move).
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sublim_theory.engine.alignment import TeacherTask
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora, linear_layers
from sublim_theory.engine.losses import KLDivergence
from sublim_theory.engine.report import alignment_report
from sublim_theory.errors import InputError
from sublim_theory.models.pretrained import Pretrained, float64_throughout, load_pretrained

__all__ = [
    "ANIMAL_QUESTIONS",
    "NUMBER_PROMPT",
    "TEACHER_METHODS",
    "CompletionLogits",
    "animal_token",
    "chat_ids",
    "lora_targets",
    "number_inputs",
    "question_inputs",
    "real_check",
    "scored_inputs",
    "teacher_direction",
    "trait_loss",
    "trait_task",
]

ANIMAL_QUESTIONS = (
    "Name your favorite animal using only one word.",
    "Which single animal speaks to your soul? One-word response.",
    "State your most beloved creature in just one word.",
    "What's your top animal pick? Respond with one word only.",
    "Tell me your animal of choice in a single word.",
)
# A short version of the paper's number prompt (its full wording is ~50 tokens; the CPU
# budget keeps sequences under ~48 tokens).
NUMBER_PROMPT = "Continue the sequence: {numbers}"
TEACHER_METHODS = ("adam", "gradient")


class CompletionLogits(nn.Module):
    """A causal LM seen as the engine's network: logits at chosen positions only.

    ``forward(inputs)`` takes ``inputs`` of shape (N, T + C), integer: the first T columns are
    token ids (right-padded: causal attention makes padding after a position irrelevant to it),
    the last C columns the positions whose logits are returned (position t predicts token
    t + 1). Returns logits of shape (N, C, V). ``logits_to_keep`` lets transformers apply the
    output layer to the scored positions only. The forward runs inside
    :func:`~sublim_theory.models.pretrained.float64_throughout`, so a float64 model is float64
    in its norms and attention softmax too (transformers would compute those in float32).

    Args:
        lm: a ``transformers`` causal LM (eager attention for forward-mode AD).
        scored: C, the number of scored positions per sequence.

    """

    def __init__(self, lm: nn.Module, scored: int) -> None:
        """Wrap ``lm``, scoring ``scored`` >= 1 positions per sequence."""
        super().__init__()
        if not isinstance(scored, int) or scored < 1:
            raise InputError(f"the number of scored positions must be >= 1, got {scored!r}")
        self.lm, self.scored = lm, scored

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits (N, C, V) at the C positions given in the last columns of ``inputs``."""
        if inputs.ndim != 2 or inputs.is_floating_point() or inputs.shape[1] <= self.scored:
            raise InputError(
                f"expected integer inputs (N, T + {self.scored}) of token ids then positions, "
                f"got {tuple(inputs.shape)} {inputs.dtype}"
            )
        ids, positions = inputs[:, : -self.scored], inputs[:, -self.scored :]
        with float64_throughout():  # transformers casts norms and softmax to float32
            logits = self.lm(input_ids=ids, logits_to_keep=positions, use_cache=False).logits
        if logits.shape[1] != self.scored:  # a model that ignores per-sample positions
            index = positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
            logits = logits.gather(1, index)
        return logits


def scored_inputs(
    sequences: Sequence[Sequence[int]], starts: Sequence[int], scored: int, pad_id: int
) -> Tensor:
    """Pack token sequences and their scored spans into :class:`CompletionLogits` inputs.

    Sequence i is scored on its ``scored`` tokens from ``starts[i]`` on, i.e. on the logits at
    positions ``starts[i] - 1, ..., starts[i] + scored - 2``. Its last scored token is never
    an input, so it is dropped; the sequences are right-padded with ``pad_id``.

    Args:
        sequences: token ids, one list per sequence.
        starts: index of the first scored token of each sequence (>= 1).
        scored: C, the number of scored tokens per sequence.
        pad_id: the padding token.

    Returns:
        int64 tensor (N, T + C): ids, then the C positions.

    Raises:
        InputError: a sequence with fewer than ``scored`` tokens from its start, or start < 1.

    """
    if len(sequences) != len(starts) or not sequences:
        raise InputError("give one start per sequence, and at least one sequence")
    rows = []
    for ids, start in zip(sequences, starts):
        if start < 1 or start + scored > len(ids):
            raise InputError(
                f"a sequence of {len(ids)} tokens cannot score {scored} tokens from {start}"
            )
        rows.append((list(ids[: start + scored - 1]), range(start - 1, start + scored - 1)))
    width = max(len(ids) for ids, _ in rows)
    packed = [ids + [pad_id] * (width - len(ids)) + list(span) for ids, span in rows]
    return torch.tensor(packed, dtype=torch.long)


def chat_ids(tokenizer: Any, user: str, system: str | None = None) -> list[int]:
    """Token ids of a chat-templated user turn, ending with the assistant's generation prompt.

    Returns:
        The ids.

    Raises:
        InputError: the tokenizer has no chat template.

    """
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this model has no chat template; use an instruct model")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def animal_token(tokenizer: Any, animal: str) -> int:
    """The first token of ``animal`` as an answer's first word (no leading space).

    Returns:
        The token id.

    Raises:
        InputError: an empty animal name.

    """
    ids = tokenizer(animal, add_special_tokens=False).input_ids
    if not animal.strip() or not ids:
        raise InputError(f"'{animal}' gives no token; name an animal")
    return int(ids[0])


def question_inputs(
    tokenizer: Any, questions: Sequence[str], scored: int = 1, system: str | None = None
) -> Tensor:
    """:class:`CompletionLogits` inputs giving the logits of each question's first answer token.

    The answer's position (the prompt's last) is repeated ``scored`` times so that one
    ``CompletionLogits(lm, scored)`` serves both the trait questions and the number documents;
    the trait loss reads the first copy.

    Returns:
        int64 tensor (len(questions), T + scored).

    Raises:
        InputError: no questions, or scored < 1.

    """
    if not questions or scored < 1:
        raise InputError("need at least one question and scored >= 1")
    prompts = [chat_ids(tokenizer, q, system) for q in questions]
    width, pad = max(map(len, prompts)), _pad(tokenizer)
    rows = [p + [pad] * (width - len(p)) + [len(p) - 1] * scored for p in prompts]
    return torch.tensor(rows, dtype=torch.long)


def _pad(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def number_inputs(
    tokenizer: Any, count: int, completion_tokens: int, seed: int, system: str | None = None
) -> tuple[Tensor, list[str]]:
    """Number-completion documents: a chat prompt with three seed numbers, then the completion.

    Seeds and completions are uniform 3-digit numbers (a fixed ``torch.Generator(seed)``) in the
    paper's answer format "629, 937, 136"; the completion is cut to ``completion_tokens``
    tokens, all scored.

    Returns:
        The inputs (N, T + C) and the decoded documents (prompt + completion), for the record.

    Raises:
        InputError: count or completion_tokens < 1.

    """
    if count < 1 or completion_tokens < 1:
        raise InputError("need at least one sequence and one completion token")
    generator = torch.Generator().manual_seed(seed)
    sequences, starts, texts = [], [], []
    for _ in range(count):
        values = torch.randint(100, 1000, (3 + completion_tokens,), generator=generator).tolist()
        prompt = chat_ids(tokenizer, NUMBER_PROMPT.format(numbers=", ".join(map(str, values[:3]))))
        answer = tokenizer(", ".join(map(str, values[3:])), add_special_tokens=False).input_ids
        answer = list(answer[:completion_tokens])
        sequences.append(prompt + answer)
        starts.append(len(prompt))
        texts.append(tokenizer.decode(prompt + answer))
    return scored_inputs(sequences, starts, completion_tokens, _pad(tokenizer)), texts


def trait_loss(animal_id: int):
    """(logits (N, 1, V), unused targets) -> mean_q -log softmax(logits)[animal]."""

    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return -torch.log_softmax(outputs[:, 0].double(), -1)[:, animal_id].mean()

    return loss


def trait_task(
    tokenizer: Any, animal: str, questions: Sequence[str], scored: int = 1
) -> TeacherTask:
    """The trait as an engine :class:`TeacherTask` on ``CompletionLogits(lm, scored)`` outputs.

    Returns:
        The task: L_T(theta) = mean_q -log P_theta(animal | question q).

    """
    inputs = question_inputs(tokenizer, questions, scored)
    target = animal_token(tokenizer, animal)
    return TeacherTask(trait_loss(target), inputs, torch.full((len(questions),), target))


def teacher_direction(
    model: FunctionalModel,
    theta0: Tensor,
    task: TeacherTask,
    method: str = "adam",
    steps: int = 3,
    lr: float = 1e-5,
) -> Tensor:
    """The teacher's direction v at theta_0 on the trait loss.

    ``adam``: v = theta_n - theta_0 after ``steps`` steps of ``torch.optim.Adam(lr)`` (default
    betas), so theta_0 + 1 * v is the fine-tuned teacher. ``gradient``: v = -grad L_T(theta_0)
    (``steps`` and ``lr`` unused), so theta_0 + eps v is one gradient step of size eps.

    Returns:
        v, a flat vector in theta_0's dtype.

    Raises:
        InputError: an unknown method, steps < 1 or lr not finite and > 0.

    """
    if method not in TEACHER_METHODS:
        raise InputError(f"unknown teacher method '{method}'; choose one of {TEACHER_METHODS}")
    if method == "gradient":
        return task.update(model, theta0)
    if steps < 1 or not (math.isfinite(lr) and lr > 0):
        raise InputError(f"adam teacher needs steps >= 1 and lr > 0, got {steps} and {lr}")
    theta = theta0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        task.loss(model, theta).backward()
        optimizer.step()
    return (theta.detach() - theta0).to(theta0.dtype)


def lora_targets(module: nn.Module) -> list[str]:
    """The Linear layers LoRA adapts: every projection of the blocks (not the output layer)."""
    return [name for name in linear_layers(module) if name.split(".")[-1] != "lm_head"]


def _peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def real_check(
    pretrained: Pretrained | str = "smollm2-135m-instruct",
    *,
    animal: str = "owl",
    questions: Sequence[str] = ANIMAL_QUESTIONS[:3],
    sequences: int = 4,
    completion_tokens: int = 10,
    teacher: str = "adam",
    teacher_steps: int = 3,
    teacher_lr: float = 1e-5,
    eps: Sequence[float] = (0.01, 0.1, 1.0),
    student_lr: float = 1.0,
    lora_rank: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    cache_dir: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The alignment theorem on a real LLM: one alignment report per teacher step eps.

    Args:
        pretrained: a loaded model, or a name/path for :func:`load_pretrained`.
        animal: the trait's answer word (its first token is the target).
        questions: the trait questions (chat-templated).
        sequences: N number-completion documents the student distills on.
        completion_tokens: C scored completion tokens per document.
        teacher: ``adam`` (v = displacement after ``teacher_steps`` Adam steps of
            ``teacher_lr``; eps = 1 is that teacher) or ``gradient`` (v = -grad L_T).
        teacher_steps: the Adam teacher's number of steps.
        teacher_lr: the Adam teacher's learning rate.
        eps: the teacher steps theta_T = theta_0 + eps v to report.
        student_lr: alpha, the student's step for the trait-loss change rows
            (``teacher_loss_change_exact`` and ``_first_order``: L_T after theta_0 + alpha
            dtheta_S, minus L_T at theta_0).
        lora_rank: None for all parameters, else LoRA adapters of this rank (alpha = rank).
        dtype: torch.float32 or torch.float64 (the model is cast if it differs).
        seed: seed of the number documents and of the LoRA A_0 draw.
        cache_dir: passed to :func:`load_pretrained` when ``pretrained`` is a name.
        batch_size: the engine's chunk size over documents (None: all at once).

    Returns:
        ``{"setup": {...}, "rows": [...]}``: the setup (model, sizes, the trait's log P under
        the base and the teacher, timings in seconds, peak resident memory) and one row per
        eps (``AlignmentReport.to_dict()`` plus ``seconds``).

    Raises:
        InputError: bad arguments (see the functions used).

    """
    start = time.perf_counter()
    if isinstance(pretrained, str):
        pretrained = load_pretrained(pretrained, dtype=dtype, cache_dir=cache_dir)
    lm = pretrained.model
    if next(lm.parameters()).dtype != dtype:
        lm = copy.deepcopy(lm).to(dtype)  # ``to`` casts in place: keep the caller's model
    lm.eval()
    if lora_rank is not None:
        lm = add_lora(lm, lora_rank, targets=lora_targets(lm), seed=seed).eval()
    if not eps or any(not (math.isfinite(e) and e > 0) for e in eps):
        raise InputError(f"eps must be finite numbers > 0, got {list(eps)}")
    loaded = time.perf_counter()

    tokenizer = pretrained.tokenizer
    task = trait_task(tokenizer, animal, questions, completion_tokens)
    inputs, documents = number_inputs(tokenizer, sequences, completion_tokens, seed)
    model = FunctionalModel(CompletionLogits(lm, completion_tokens))
    theta0 = model.flat_params()
    v = teacher_direction(model, theta0, task, teacher, teacher_steps, teacher_lr)
    with torch.no_grad():
        base_loss = float(task.loss(model, theta0))
        teacher_loss = float(task.loss(model, theta0 + v))
    directed = time.perf_counter()

    loss = KLDivergence()
    rows = []
    for step in eps:
        began = time.perf_counter()
        report = alignment_report(
            model,
            v,
            inputs,
            loss,
            float(step),
            theta0=theta0,
            teacher=task,
            student_lr=student_lr,
            batch_size=batch_size,
        )
        rows.append(report.to_dict() | {"seconds": time.perf_counter() - began})
    done = time.perf_counter()
    setup = {
        "model": pretrained.name,
        "sha256": pretrained.sha256,
        "parameters": "lora" if lora_rank is not None else "full",
        "lora_rank": lora_rank,
        "num_params": model.num_params,
        "dtype": str(dtype).replace("torch.", ""),
        "animal": animal,
        "animal_token": tokenizer.decode([animal_token(tokenizer, animal)]),
        "questions": len(questions),
        "teacher": teacher,
        "teacher_steps": teacher_steps if teacher == "adam" else None,
        "teacher_lr": teacher_lr if teacher == "adam" else None,
        "student_lr": student_lr,
        "trait_logp_base": -base_loss,
        "trait_logp_teacher_eps1": -teacher_loss,
        "sequences": sequences,
        "completion_tokens": completion_tokens,
        "tokens_per_sequence": int(inputs.shape[1] - completion_tokens + 1),
        "example_document": documents[0],
        "seconds_load": loaded - start,
        "seconds_teacher": directed - loaded,
        "seconds_reports": done - directed,
        "peak_memory_gib": _peak_memory_gib(),
    }
    return {"setup": setup, "rows": rows}
