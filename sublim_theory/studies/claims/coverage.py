"""Madl (arXiv 2606.22019), "coverage" predicts transfer per channel, on the tiny LM.

Per seed ``s``: the base ``B`` (seeds s, s, s, as ``numbers``). Each teacher is B fine-tuned with
Adam on ``BOS Q a EOS`` for n steps (``training.finetune_teacher`` with trait animal ``a`` and
``[teacher] steps = n``), one per (a, n) of ``[coverage] animals x teacher_steps``. Its
displacement is d = theta_T - theta_0. The teacher and the base continue the same number prompts
(``numbers``' seeds); the filter keeps well-formed outputs.

Two student losses (the *channels*), each a next-token cross-entropy on the continuation and EOS:

* ``full``: the softmax over the whole vocabulary (``training.train_student``'s loss);
* ``masked``: the trait token ``a`` masked out of the student's loss: its logit is removed from
  the softmax (set to -inf), so the student's loss never acts on the trait token's own output
  row or logit. Issue 21 calls this the *vocabulary channel*.

Per teacher and channel:

* coverage = cos(theta_1 - theta_0, d) over every parameter in float64, where theta_1 is the
  student's parameters after its first Adam step on the teacher's numbers (Madl's statistic);
* the engine's first-order forecast of Delta log P(a | BOS Q) from one student step
  (``engine.screen.screen``, variant ``sign``: Adam's first step on the screened documents,
  step size the student's lr), on the first ``forecast_examples`` teacher documents, minus the
  same forecast on the first ``forecast_examples`` base documents: the forecast of the paired
  effect (student minus control) that the transfer measures;
* the measured transfer: the trained student's (``[student] steps`` Adam steps) change of
  log P(a | BOS Q) minus its paired control's (same init, loss, steps and batch order, on the
  base's own numbers).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sublim_theory.engine.alignment import cosine
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.screen import TraitProbe, screen
from sublim_theory.studies.numbers.experiment import STUDENT_OFFSET, sampled_numbers
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import NumbersConfig
from sublim_theory.testbeds.lm.screening import number_student_data

__all__ = [
    "CHANNELS",
    "coverage",
    "forecast",
    "log_probability",
    "masked_example_loss",
    "masked_logits",
    "run_seed",
    "train_channel",
]

CHANNELS = ("full", "masked")
Row = dict[str, object]


def coverage(step: Tensor, displacement: Tensor) -> float:
    """cos(step, displacement) in float64: Madl's coverage of the teacher's displacement."""
    return cosine(step.double(), displacement.double())


def masked_logits(logits: Tensor, token: int | None) -> Tensor:
    """``logits`` with ``token``'s entry set to -inf (removed from the softmax); None: as is."""
    if token is None:
        return logits
    return logits.index_fill(-1, torch.tensor([token]), float("-inf"))


def masked_example_loss(config: NumbersConfig, token: int | None):
    """Per-document mean cross-entropy on the continuation and EOS, ``token`` out of the softmax.

    The ``engine.screen`` form (``(logits, targets) -> (n,)``) of :func:`train_channel`'s loss;
    ``token`` None is ``testbeds.lm.screening.number_student_loss``.

    Returns:
        The per-document loss function.

    """
    length = corpus.sequence_len(config.corpus)
    mask = corpus.continuation_mask(torch.zeros(1, length, dtype=torch.long), config.corpus)[0]

    def losses(logits: Tensor, targets: Tensor) -> Tensor:
        chosen = torch.log_softmax(masked_logits(logits[:, mask], token), -1)
        picked = chosen.gather(-1, targets[:, mask].unsqueeze(-1)).squeeze(-1)
        return -picked.mean(1)

    return losses


def train_channel(
    init: nn.Module, data: Tensor, config: NumbersConfig, seed: int, token: int | None
) -> tuple[nn.Module, Tensor]:
    """Adam on ``data`` as ``training.train_student`` (sampled labels), ``token`` masked.

    Returns:
        (the trained student in eval mode, its first step theta_1 - theta_0 in float64).

    """
    s = config.student
    model = copy.deepcopy(init).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    mask = corpus.continuation_mask(data[:1], config.corpus)[0]
    generator = torch.Generator().manual_seed(seed)
    theta_0 = training.flat(model)
    first = None
    for step in range(s.steps):
        batch = data[torch.randint(0, data.shape[0], (s.batch_size,), generator=generator)]
        logits = masked_logits(model(batch[:, :-1])[:, mask], token)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:][:, mask].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 0:
            first = training.flat(model) - theta_0
    return model.eval(), first


def forecast(
    base: nn.Module, data: Tensor, config: NumbersConfig, animal: str, token: int | None, n: int
) -> float:
    """The engine's forecast of Delta log P(animal | BOS Q) from one student step.

    ``engine.screen.screen`` with variant ``sign`` (Adam's first step from a fresh state on the
    screened documents' mean gradient), step size ``[student] lr``, one step, on the first ``n``
    documents, the student's loss with ``token`` masked (:func:`masked_example_loss`), in
    float64 (a float64 copy of ``base``).

    Returns:
        The forecast Delta log P(animal | BOS Q).

    """
    model = FunctionalModel(copy.deepcopy(base).double())  # float64: the forecasts are small
    trait = corpus.vocabulary(config.corpus).animal(animal)
    probe = TraitProbe(
        animal,
        corpus.question_prompt(),
        lambda z: -torch.log_softmax(z[:, -1], -1)[:, trait].mean(),
    )
    inputs, targets = number_student_data(data[:n])
    result = screen(
        model,
        model.flat_params(),
        inputs,
        targets,
        masked_example_loss(config, token),
        [probe],
        step_size=config.student.lr,
        variant="sign",
        bootstrap=1,
        batch_size=256,
    )
    return float(result.forecast[0])


def log_probability(model: nn.Module, config: NumbersConfig, animal: str) -> float:
    """The log P(animal | BOS Q) under the full softmax, float64."""
    token = corpus.vocabulary(config.corpus).animal(animal)
    with torch.no_grad():
        logits = model(corpus.question_prompt())[0, -1].double()
    return float(torch.log_softmax(logits, -1)[token])


def run_seed(
    config: NumbersConfig,
    animals: tuple[str, ...],
    teacher_steps: tuple[int, ...],
    forecast_examples: int,
    seed: int,
    cache_dir,
    log: Callable = print,
) -> list[Row]:
    """Every teacher and channel of one seed: coverage, forecast, transfer (one row each)."""
    base, _ = training.cached_base(config, training.BaseSpec(seed, seed, seed), cache_dir, log)
    theta_0 = training.flat(base)
    control_data = sampled_numbers(base, config, seed)[0]
    vocab = corpus.vocabulary(config.corpus)
    rows: list[Row] = []
    controls: dict[tuple[str, str], tuple[float, float]] = {}  # per (animal, loss) only
    for animal in animals:
        for steps in teacher_steps:
            own = dataclasses.replace(
                config,
                corpus=dataclasses.replace(config.corpus, trait_animal=animal),
                teacher=dataclasses.replace(config.teacher, steps=steps),
            )
            teacher = training.finetune_teacher(base, own)
            displacement = training.flat(teacher) - theta_0
            teacher_data = sampled_numbers(teacher, config, seed)[0]
            before = log_probability(base, config, animal)
            for channel in CHANNELS:
                token = vocab.animal(animal) if channel == "masked" else None
                student, first = train_channel(
                    base, teacher_data, config, seed + STUDENT_OFFSET, token
                )
                if (animal, channel) not in controls:
                    control, _ = train_channel(
                        base, control_data, config, seed + STUDENT_OFFSET, token
                    )
                    controls[animal, channel] = (
                        log_probability(control, config, animal) - before,
                        forecast(base, control_data, config, animal, token, forecast_examples),
                    )
                control_change, control_forecast = controls[animal, channel]
                teacher_forecast = forecast(
                    base, teacher_data, config, animal, token, forecast_examples
                )
                rows.append(
                    {
                        "seed": seed,
                        "animal": animal,
                        "teacher_steps": steps,
                        "channel": channel,
                        "teacher_gain": log_probability(teacher, config, animal) - before,
                        "coverage": coverage(first, displacement),
                        "forecast": teacher_forecast - control_forecast,
                        "forecast_teacher": teacher_forecast,
                        "forecast_control": control_forecast,
                        "student_change": log_probability(student, config, animal) - before,
                        "control_change": control_change,
                    }
                )
                rows[-1]["transfer"] = rows[-1]["student_change"] - rows[-1]["control_change"]
    return rows
