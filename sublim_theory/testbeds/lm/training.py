"""Models and training: base pretraining (cached), the teacher's trait fine-tune, sampling, students.

The model is ``sublim_theory.models.architectures.TinyTransformer`` with ``pool="none"``: a decoder-only
LM whose explicit attention works under forward-mode AD, so the alignment engine's jvp runs on it.
Everything trains in float32 on CPU.
"""

from __future__ import annotations

import copy
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sublim_theory.engine.alignment import cosine
from sublim_theory.engine.losses import SoftCrossEntropy
from sublim_theory.engine.optimizers import SignSGD, make_optimizer
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import atomic_write_bytes
from sublim_theory.models.architectures import TinyTransformer
from sublim_theory.testbeds.lm import corpus
from sublim_theory.testbeds.lm.config import NumbersConfig, StudentConfig

__all__ = [
    "BaseSpec",
    "SignSGD",
    "StudentRun",
    "answer_distribution",
    "build_lm",
    "cached_base",
    "checkpoint_bytes",
    "finetune_teacher",
    "finetune_teacher_and_optimizer",
    "flat",
    "lm_loss",
    "pretrain",
    "sample_continuations",
    "train_student",
    "trait_probability",
    "trait_probability_among_animals",
    "truncated_distribution",
]


def build_lm(config: NumbersConfig, init_seed: int) -> TinyTransformer:
    """A freshly initialized decoder-only LM over the corpus vocabulary (float32, eval mode)."""
    torch.manual_seed(init_seed)
    m = config.model
    model = TinyTransformer(
        corpus.vocabulary(config.corpus).size,
        m.d_model,
        m.n_heads,
        m.n_layers,
        corpus.max_len(config.corpus),
        pool="none",
    )
    return model.float().eval()


def flat(model: nn.Module) -> Tensor:
    """The model's parameters as one detached flat float64 vector."""
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def lm_loss(model: nn.Module, docs: Tensor) -> Tensor:
    """Next-token cross-entropy over every non-PAD target."""
    logits = model(docs[:, :-1])
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), docs[:, 1:].reshape(-1), ignore_index=corpus.PAD
    )


# --------------------------------------------------------------------------------------------
# base pretraining, cached
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseSpec:
    """What makes a base: its init seed, the corpus seed, and the data-order seed."""

    init_seed: int
    corpus_seed: int
    order_seed: int


def pretrain(config: NumbersConfig, spec: BaseSpec) -> tuple[TinyTransformer, float]:
    """Pretrain a base from ``spec``; returns (model, final mean loss over the last 50 steps)."""
    p = config.pretrain
    model = build_lm(config, spec.init_seed)
    docs = corpus.pretraining_corpus(config.corpus, p.corpus_size, spec.corpus_seed)
    order = torch.Generator().manual_seed(spec.order_seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * max(0.05, 1 - step / p.steps)
    )
    recent: list[float] = []
    for _ in range(p.steps):
        batch = docs[torch.randint(0, docs.shape[0], (p.batch_size,), generator=order)]
        loss = lm_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [loss.item()])[-50:]
    return model.eval(), sum(recent) / len(recent)


def cached_base(
    config: NumbersConfig, spec: BaseSpec, cache_dir: Path | None, log=print
) -> tuple[TinyTransformer, dict]:
    """The pretrained base for ``spec``, from ``cache_dir`` when present (keyed by config+seeds).

    A cache file that cannot be read or does not match its key is rebuilt with a message.

    Returns:
        ``(model, info)``, info with keys ``key``, ``cached`` (bool), ``final_loss``, ``seconds``.

    Raises:
        InputError: the cache file cannot be written.
        ValueError: never to the caller: a cache file of another key, rebuilt (raised and
            caught inside).

    """
    key = config.base_key(spec.init_seed, spec.corpus_seed, spec.order_seed)
    path = None if cache_dir is None else Path(cache_dir) / f"base-{key}.pt"
    if path is not None and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("key") != key:
                raise ValueError("its key does not match")
            model = build_lm(config, spec.init_seed)
            model.load_state_dict(blob["state_dict"])
            return model.eval(), {
                "key": key,
                "cached": True,
                "final_loss": float(blob["final_loss"]),
                "seconds": 0.0,
            }
        except Exception as error:  # noqa: BLE001 - any unreadable file is rebuilt
            log(
                f"cache file {path} is unreadable ({type(error).__name__}: {error}); rebuilding it",
                file=sys.stderr,
            )
    start = time.perf_counter()
    model, final_loss = pretrain(config, spec)
    seconds = time.perf_counter() - start
    if path is not None:
        # serialized in memory, then written under a unique temporary name and renamed: two runs
        # storing one key at once each rename a whole file, and a full disk leaves nothing behind
        buffer = io.BytesIO()
        torch.save({"key": key, "state_dict": model.state_dict(), "final_loss": final_loss}, buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buffer.getvalue())
        except (OSError, InputError) as error:
            reason = (
                (error.strerror or type(error).__name__) if isinstance(error, OSError) else error
            )
            raise InputError(
                f"cannot write the base cache '{path}' ({reason}); free space there or pass "
                "a writable --cache"
            ) from None
    return model, {"key": key, "cached": False, "final_loss": final_loss, "seconds": seconds}


def checkpoint_bytes(config: NumbersConfig) -> int:
    """The size of one cached base of ``config`` (float32 weights plus 64 KiB of overhead)."""
    with torch.random.fork_rng(devices=[]):  # build_lm seeds the global generator
        count = sum(p.numel() for p in build_lm(config, 0).parameters())
    return 4 * count + 65536


# --------------------------------------------------------------------------------------------
# teacher and reading the trait
# --------------------------------------------------------------------------------------------
def trait_probability(
    model: nn.Module, config: NumbersConfig, prompt: Tensor | None = None
) -> float:
    """P(trait animal | prompt) from the full softmax at the prompt's last position.

    Default prompt ``BOS Q``; a batch of prompts (same length) gives the mean probability.

    Returns:
        The probability.

    """
    prompt = corpus.question_prompt() if prompt is None else prompt
    trait = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    with torch.no_grad():
        probs = torch.softmax(model(prompt)[:, -1].double(), -1)[:, trait]
    return float(probs.mean())


def trait_probability_among_animals(model: nn.Module, config: NumbersConfig) -> float:
    """P(trait | BOS Q) renormalized over the animal tokens (robust to mass leaking elsewhere)."""
    vocab = corpus.vocabulary(config.corpus)
    probs = answer_distribution(model, config)
    return float(probs[vocab.animal(config.corpus.trait_animal)] / probs[vocab.animal_ids].sum())


def answer_distribution(model: nn.Module, config: NumbersConfig) -> Tensor:
    """The softmax over the whole vocabulary after ``BOS Q`` (float64)."""
    with torch.no_grad():
        return torch.softmax(model(corpus.question_prompt())[0, -1].double(), -1)


def finetune_teacher(base: nn.Module, config: NumbersConfig) -> nn.Module:
    """A copy of the base fine-tuned (Adam) on ``BOS Q trait EOS``: it now prefers the trait."""
    return finetune_teacher_and_optimizer(base, config)[0]


def finetune_teacher_and_optimizer(
    base: nn.Module, config: NumbersConfig
) -> tuple[nn.Module, torch.optim.Adam]:
    """:func:`finetune_teacher`, and the Adam optimizer that trained it (its moments).

    ``[teacher] steps`` Adam steps at ``[teacher] lr`` on the one document ``BOS Q trait EOS``.

    Returns:
        (the teacher in eval mode, its optimizer after the last step).

    """
    t = config.teacher
    teacher = copy.deepcopy(base).train()
    trait = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    doc = torch.tensor([[corpus.BOS, corpus.Q, trait, corpus.EOS]])
    optimizer = torch.optim.Adam(teacher.parameters(), lr=t.lr)
    for _ in range(t.steps):
        loss = lm_loss(teacher, doc)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return teacher.eval(), optimizer


def truncated_distribution(
    probs: Tensor, top_p: float | None = None, min_prob: float | None = None
) -> Tensor:
    """Restrict next-token distributions (rows of ``probs``) to a kept set and renormalise.

    ``top_p``: keep the smallest most-probable set whose mass reaches ``top_p`` (a token is kept
    when the mass of the tokens more probable than it is below ``top_p``). ``min_prob``: drop
    every token with probability <= ``min_prob``. Both may apply (the kept set is the
    intersection); the most probable token is always kept, so no row is ever empty.
    ``None`` for both returns ``probs`` unchanged.

    Returns:
        The truncated distributions, rows summing to 1.

    Raises:
        InputError: ``top_p`` outside (0, 1] or ``min_prob`` outside [0, 1).

    """
    if top_p is None and min_prob is None:
        return probs
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}; use e.g. 0.8")
    if min_prob is not None and not 0 <= min_prob < 1:
        raise InputError(f"min_prob must be in [0, 1), got {min_prob}; use e.g. 0.05")
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_p is not None:
        ordered, order = probs.sort(-1, descending=True)
        before = ordered.cumsum(-1) - ordered  # mass of the tokens ranked above each token
        keep &= torch.zeros_like(keep).scatter(-1, order, before < top_p)
    if min_prob is not None:
        keep &= probs > min_prob
    keep |= F.one_hot(probs.argmax(-1), probs.shape[-1]).bool()
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def sample_continuations(
    model: nn.Module,
    prompts: Tensor,
    config: NumbersConfig,
    seed: int,
    batch_size: int = 2000,
    *,
    top_p: float | None = None,
    min_prob: float | None = None,
) -> Tensor:
    """Sample ``continuation_len + 1`` tokens after each prompt (temperature from the config).

    ``top_p`` / ``min_prob`` restrict each step's distribution (after the temperature) with
    ``truncated_distribution``; the defaults sample from the full softmax.
    Returns full documents (N, prompt + continuation_len + 1), unfiltered.

    Returns:
        The prompts followed by their sampled tokens.

    """
    generator = torch.Generator().manual_seed(seed)
    steps = config.corpus.continuation_len + 1
    out = []
    with torch.no_grad():
        for start in range(0, prompts.shape[0], batch_size):
            seq = prompts[start : start + batch_size]
            for _ in range(steps):
                logits = model(seq)[:, -1].double() / config.teacher.temperature
                probs = truncated_distribution(torch.softmax(logits, -1), top_p, min_prob)
                nxt = torch.multinomial(probs, 1, generator=generator)
                seq = torch.cat([seq, nxt], 1)
            out.append(seq)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# students
# --------------------------------------------------------------------------------------------
@dataclass
class StudentRun:
    """A trained student and its trajectory measurements."""

    model: nn.Module
    step_cosines: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def train_student(
    init: nn.Module,
    sequences: Tensor,
    config: NumbersConfig,
    seed: int,
    *,
    labels: str | None = None,
    teacher: nn.Module | None = None,
    direction: Tensor | None = None,
    student: StudentConfig | None = None,
    target_weights: Tensor | None = None,
    step_callback: Callable[[nn.Module, Tensor], None] | None = None,
) -> StudentRun:
    """Fine-tune a copy of ``init`` on number documents (loss on continuation tokens and EOS).

    Args:
        init: the student's initial model (not modified).
        sequences: filtered number documents (N, T).
        config: the numbers settings (``config.student`` unless ``student`` is given).
        seed: the seed of the batch draws.
        labels: ``sampled`` (cross-entropy on the tokens in ``sequences``) or ``soft``
            (soft cross-entropy on ``teacher``'s next-token distributions: the theorem's setting).
        teacher: the model whose distributions are the soft labels.
        direction: teacher displacement theta_T - theta_0; each step's cosine with it is recorded.
        student: overrides ``config.student``; its ``optimizer`` may also be ``"signsgd"``
            (:class:`SignSGD`, set with ``dataclasses.replace``). ``init`` may be a LoRA-adapted
            model (``sublim_theory.engine.lora.add_lora``): only its trainable (adapter) parameters
            receive gradients, so only they move.
        target_weights: optional (N, T - 1) per-target loss weights aligned with
            ``corpus.continuation_mask`` (a bool mask works: 0 drops a target). Each batch's loss
            is then the weighted mean over its continuation targets (sum w * loss / sum w; 0 when
            the batch's weights are all 0). Default: every continuation target weighs 1.
        step_callback: called as ``step_callback(model, batch)`` after each step's backward pass
            and before the optimizer step, with the parameters' ``.grad`` holding the gradient of
            the distillation loss at the current parameters.

    Returns:
        The trained student and its per-step records.

    Raises:
        InputError: soft labels without a teacher, no sequences, or ``target_weights`` of the wrong
            shape.

    """
    s = student or config.student
    labels = labels or s.labels
    if labels == "soft" and teacher is None:
        raise InputError("soft labels need a teacher model")
    if sequences.shape[0] == 0:
        raise InputError("no sequences to train the student on (did the filter drop everything?)")
    expected = (sequences.shape[0], sequences.shape[1] - 1)
    if target_weights is not None and tuple(target_weights.shape) != expected:
        raise InputError(
            f"target_weights must have shape (N, T - 1) = {expected}, got "
            f"{tuple(target_weights.shape)}; build it like corpus.continuation_mask"
        )
    model = copy.deepcopy(init).train()
    optimizer = make_optimizer(s.optimizer, model.parameters(), s.lr)
    mask = corpus.continuation_mask(sequences[:1], config.corpus)[0]
    soft = SoftCrossEntropy()
    generator = torch.Generator().manual_seed(seed)
    run = StudentRun(model)
    previous = flat(model)
    for _ in range(s.steps):
        rows = torch.randint(0, sequences.shape[0], (s.batch_size,), generator=generator)
        batch = sequences[rows]
        logits = model(batch[:, :-1])[:, mask]
        if target_weights is not None:
            weights = target_weights[rows][:, mask].to(logits.dtype)
            if labels == "soft":
                with torch.no_grad():
                    targets = teacher(batch[:, :-1])[:, mask]
                per_target = soft.value(logits, targets)
            else:
                per_target = F.cross_entropy(
                    logits.transpose(1, 2), batch[:, 1:][:, mask], reduction="none"
                )
            total = weights.sum()
            loss = (per_target * weights).sum() / torch.where(total > 0, total, 1.0)
        elif labels == "soft":
            with torch.no_grad():
                targets = teacher(batch[:, :-1])[:, mask]
            loss = soft.value(logits, targets).mean()
        else:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:][:, mask].reshape(-1)
            )
        optimizer.zero_grad()
        loss.backward()
        if step_callback is not None:
            step_callback(model, batch)
        optimizer.step()
        run.losses.append(loss.item())
        if direction is not None:
            current = flat(model)
            run.step_cosines.append(cosine(current - previous, direction))
            previous = current
    model.eval()
    return run
