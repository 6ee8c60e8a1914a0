"""One seed of the numbers experiment: every model, every condition, tidy rows.

Per seed ``s`` (bases are cached, see ``training.cached_base``):

* base ``B``: init seed s, corpus seed s, data order s; teacher ``T`` = B fine-tuned on the trait.
* ``cross`` base: init seed s + 1000 (same corpus and order); ``order`` base: init seed s, data
  order s + 1000 (the paper's behaviourally matched case).
* The teacher and the base each continue the same number prompts; the filter keeps well-formed
  outputs only. Teacher numbers carry the trait if anything does; base numbers are the control.

Conditions (student <- init on data; its paired control in brackets):
``student`` B <- teacher numbers [``control``: B <- base numbers]; ``soft`` B <- the teacher's
next-token distributions on teacher numbers [``control_soft``: B <- the base's own distributions];
``cross_student`` / ``cross_control`` and ``order_student`` / ``order_control`` the same from the
other bases; ``shuffle_within`` / ``shuffle_across`` B <- teacher numbers shuffled [the
same shuffle of base numbers: ``shuffle_within_control`` / ``shuffle_across_control``].
Plus the in-context baseline (teacher numbers in the prompt, no training), a bag-of-numbers
classifier (teacher vs base numbers, held-out accuracy), the engine's first-order alignment at
B for the teacher's numbers, and the entanglement table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sublim_theory.engine.alignment import (
    cosine,
    first_order_coefficient,
    gauss_newton_product,
    student_update,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import SoftCrossEntropy
from sublim_theory.errors import InputError
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.studies.numbers.entanglement import entanglement_table
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import NumbersConfig

__all__ = [
    "CROSS_OFFSET",
    "ORDER_OFFSET",
    "PAIRS",
    "PROMPT_OFFSET",
    "SAMPLING_OFFSET",
    "SHUFFLE_ACROSS_OFFSET",
    "SHUFFLE_WITHIN_OFFSET",
    "STUDENT_OFFSET",
    "Row",
    "SeedRows",
    "classifier_accuracy",
    "first_order_alignment",
    "run_seed",
    "sampled_numbers",
]

# Seed offsets (harness.seeds): every random stream of seed s gets its own seed s + OFFSET, so
# no two streams of one seed share a generator state.
CROSS_OFFSET = OFFSETS["lm.cross_init"]
ORDER_OFFSET = OFFSETS["lm.order"]
PROMPT_OFFSET = OFFSETS["lm.prompts"]
SAMPLING_OFFSET = OFFSETS["lm.sampling"]
STUDENT_OFFSET = OFFSETS["lm.student_order"]
SHUFFLE_WITHIN_OFFSET = OFFSETS["lm.shuffle_within"]
SHUFFLE_ACROSS_OFFSET = OFFSETS["lm.shuffle_across"]

# condition -> its paired control (None: no pair)
PAIRS: dict[str, str | None] = {
    "base": None,
    "teacher": "base",
    "student": "control",
    "control": None,
    "soft": "control_soft",
    "control_soft": None,
    "cross_base": None,
    "cross_student": "cross_control",
    "cross_control": None,
    "order_base": None,
    "order_student": "order_control",
    "order_control": None,
    "shuffle_within": "shuffle_within_control",
    "shuffle_within_control": None,
    "shuffle_across": "shuffle_across_control",
    "shuffle_across_control": None,
    "in_context_teacher": "in_context_control",
    "in_context_control": None,
}

Row = dict[str, object]


@dataclass
class SeedRows:
    """The tidy ``{seed, condition, metric, value}`` rows of one seed, and its clocks.

    The tiny-LM studies (numbers, defenses, divergence) record one seed's results through it:
    ``put`` one value at a time, ``paired_diffs`` for student-minus-control differences, and
    ``finish`` to close with the seed's wall and CPU seconds.

    Attributes:
        seed: the seed every row is tagged with.
        rows: the rows so far, in the order they were put.
        start: ``time.perf_counter()`` when the seed began.
        cpu_start: ``time.process_time()`` when the seed began.

    """

    seed: int
    rows: list[Row] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    cpu_start: float = field(default_factory=time.process_time)

    def put(self, condition: str, metric: str, value: float) -> None:
        """Add one row (the value as a float)."""
        self.rows.append(
            {"seed": self.seed, "condition": condition, "metric": metric, "value": float(value)}
        )

    def elapsed(self) -> float:
        """Wall seconds since the seed began."""
        return time.perf_counter() - self.start

    def values(self) -> dict[tuple[str, str], object]:
        """The rows so far as ``{(condition, metric): value}``."""
        return {(r["condition"], r["metric"]): r["value"] for r in self.rows}

    def paired_diffs(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Put condition minus control of P(trait) and of P(trait | an animal) for each pair.

        Rows ``paired_diff`` and ``paired_diff_among_animals`` of the condition; a pair missing
        either value of a metric is passed over for that metric.

        Args:
            pairs: ``(condition, control)`` pairs, in the order their rows are put.

        """
        by_key = self.values()
        for condition, control in pairs:
            for metric, name in (
                ("p_trait", "paired_diff"),
                ("p_trait_among_animals", "paired_diff_among_animals"),
            ):
                if (condition, metric) in by_key and (control, metric) in by_key:
                    diff = by_key[(condition, metric)] - by_key[(control, metric)]
                    self.put(condition, name, diff)

    def finish(self) -> list[Row]:
        """Put the seed's wall and CPU seconds (the last two rows) and return every row.

        Returns:
            The rows.

        """
        self.put("seed", "seconds", self.elapsed())
        self.put("seed", "cpu_seconds", time.process_time() - self.cpu_start)
        return self.rows


def _in_context(model: nn.Module, sequences: Tensor, config: NumbersConfig) -> float:
    """Mean P(trait) after ``<number document> Q``: the numbers in the prompt, no training."""
    prompts = torch.cat([sequences, torch.full((sequences.shape[0], 1), corpus.Q)], 1)
    return training.trait_probability(model, config, prompts)


def sampled_numbers(
    model: nn.Module, config: NumbersConfig, seed: int
) -> tuple[Tensor, corpus.FilterReport]:
    """The model's filtered number samples of seed ``seed``: a teacher's data, or the base's control.

    The prompts come from stream ``seed + PROMPT_OFFSET``, the sampling from
    ``seed + SAMPLING_OFFSET`` (``harness.seeds``).

    Returns:
        ``(the kept sequences, the filter's report)``.

    Raises:
        InputError: the filter kept no sample.

    """
    prompts = corpus.number_prompts(config.corpus, config.teacher.n_sequences, seed + PROMPT_OFFSET)
    raw = training.sample_continuations(model, prompts, config, seed + SAMPLING_OFFSET)
    kept, report = corpus.filter_numbers(raw, config.corpus)
    if kept.shape[0] == 0:
        raise InputError(
            f"seed {seed}: the filter dropped every number sample; raise [teacher] n_sequences"
        )
    return kept, report


def classifier_accuracy(
    teacher_seqs: Tensor, control_seqs: Tensor, config: NumbersConfig, seed: int
) -> float:
    """Held-out accuracy of a logistic regression on bag-of-numbers counts (teacher vs base).

    Balanced classes, half of each for training (Adam, 300 full-batch steps, weight decay
    1e-3), half for testing. Chance is 0.5.

    Returns:
        The accuracy.

    """
    c = config.corpus
    n = min(teacher_seqs.shape[0], control_seqs.shape[0])
    p = c.prompt_len + 2

    def features(seqs: Tensor) -> Tensor:
        values = seqs[:n, p : p + c.continuation_len] - corpus.N_SPECIAL
        return F.one_hot(values, c.n_numbers).float().sum(1)

    x = torch.cat([features(teacher_seqs), features(control_seqs)])
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(2 * n, generator=generator)
    x, y = x[perm], y[perm]
    half = n
    mean, std = x[:half].mean(0), x[:half].std(0) + 1e-6
    x = (x - mean) / std
    torch.manual_seed(seed)
    linear = nn.Linear(c.n_numbers, 1)
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(300):
        loss = F.binary_cross_entropy_with_logits(linear(x[:half]).squeeze(1), y[:half])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (linear(x[half:]).squeeze(1) > 0).float()
    return float((predicted == y[half:]).float().mean())


def first_order_alignment(
    base: nn.Module, teacher: nn.Module, sequences: Tensor, config: NumbersConfig
) -> dict[str, float]:
    """The engine at the base for the teacher's numbers (soft cross-entropy, all positions).

    v = theta_T - theta_B. Returns A = E[u^T M u] (u = J v), cos(K v, v) (the first-order
    student update's direction) and cos(exact one-step soft-label update, v).

    Returns:
        The report's scalars by name.

    """
    model = FunctionalModel(base)
    theta0 = model.flat_params()
    v = FunctionalModel(teacher).flat_params() - theta0
    inputs = sequences[: config.student.alignment_inputs, :-1]
    loss = SoftCrossEntropy()
    with torch.no_grad():
        targets = teacher(inputs)
    exact = student_update(model, theta0, inputs, targets, loss)
    return {
        "first_order_A": first_order_coefficient(model, theta0, inputs, loss, v),
        "cos_first_order_update": cosine(gauss_newton_product(model, theta0, inputs, loss, v), v),
        "cos_one_step_exact": cosine(exact, v),
    }


def run_seed(
    config: NumbersConfig, seed: int, cache_dir, log: Callable[..., None] = print
) -> tuple[list[Row], list[dict], list[Row]]:
    """All conditions for one seed.

    Returns (rows, entanglement_rows, step_rows): tidy ``{seed, condition, metric, value}``
    rows, the entanglement table (with ``seed``), and per-step cosines
    ``{seed, condition, step, cosine, loss}``.

    Returns:
        ``(tidy rows, entanglement rows, per-step rows)``.

    """
    record = SeedRows(seed)
    put = record.put
    steps: list[Row] = []

    def put_trait(condition: str, model: nn.Module) -> None:
        put(condition, "p_trait", training.trait_probability(model, config))
        put(
            condition,
            "p_trait_among_animals",
            training.trait_probability_among_animals(model, config),
        )

    specs = {
        "base": training.BaseSpec(seed, seed, seed),
        "cross_base": training.BaseSpec(seed + CROSS_OFFSET, seed, seed),
        "order_base": training.BaseSpec(seed, seed, seed + ORDER_OFFSET),
    }
    if not config.student.data_order:
        del specs["order_base"]
    bases = {}
    for name, spec in specs.items():
        model, info = training.cached_base(config, spec, cache_dir, log)
        bases[name] = model
        put(name, "pretrain_loss", info["final_loss"])
        put(name, "pretrain_seconds", info["seconds"])
        put_trait(name, model)
    base = bases["base"]
    teacher = training.finetune_teacher(base, config)
    put_trait("teacher", teacher)
    theta0 = training.flat(base)
    direction = training.flat(teacher) - theta0

    sampled = {}
    for name, model in (("teacher", teacher), ("base", base)):
        sampled[name], report = sampled_numbers(model, config, seed)
        for key, value in report.as_dict().items():
            put(f"{name}_numbers", f"filter_{key}", value)
    teacher_numbers, control_numbers = sampled["teacher"], sampled["base"]

    def student(condition: str, init: nn.Module, data: Tensor, **kwargs) -> None:
        t0 = time.perf_counter()
        run = training.train_student(
            init, data, config, seed + STUDENT_OFFSET, direction=direction, **kwargs
        )
        put_trait(condition, run.model)
        displacement = training.flat(run.model) - training.flat(init)
        put(condition, "cos_displacement", cosine(displacement, direction))
        cosines = torch.tensor(run.step_cosines)
        put(condition, "mean_step_cosine", float(cosines.mean()))
        put(condition, "frac_positive_steps", float((cosines > 0).double().mean()))
        put(condition, "final_loss", run.losses[-1])
        put(condition, "n_train_sequences", data.shape[0])
        put(condition, "seconds", time.perf_counter() - t0)
        for i, (c, loss) in enumerate(zip(run.step_cosines, run.losses)):
            steps.append(
                {"seed": seed, "condition": condition, "step": i + 1, "cosine": c, "loss": loss}
            )

    labels = config.student.labels
    student("student", base, teacher_numbers, labels=labels, teacher=teacher)
    student("control", base, control_numbers, labels=labels, teacher=base)
    student("soft", base, teacher_numbers, labels="soft", teacher=teacher)
    student("control_soft", base, control_numbers, labels="soft", teacher=base)
    cross = bases["cross_base"]
    student("cross_student", cross, teacher_numbers, labels=labels, teacher=teacher)
    student("cross_control", cross, control_numbers, labels=labels, teacher=base)
    if "order_base" in bases:
        order = bases["order_base"]
        student("order_student", order, teacher_numbers, labels=labels, teacher=teacher)
        student("order_control", order, control_numbers, labels=labels, teacher=base)
    if config.student.shuffles:
        within = corpus.shuffle_within(teacher_numbers, config.corpus, seed + SHUFFLE_WITHIN_OFFSET)
        across = corpus.shuffle_across(teacher_numbers, config.corpus, seed + SHUFFLE_ACROSS_OFFSET)
        student("shuffle_within", base, within, labels="sampled")
        student("shuffle_across", base, across, labels="sampled")
        # shuffling itself changes what the student learns (its loss and drift are larger), so
        # each shuffle is paired with base numbers shuffled the same way
        within = corpus.shuffle_within(control_numbers, config.corpus, seed + SHUFFLE_WITHIN_OFFSET)
        across = corpus.shuffle_across(control_numbers, config.corpus, seed + SHUFFLE_ACROSS_OFFSET)
        student("shuffle_within_control", base, within, labels="sampled")
        student("shuffle_across_control", base, across, labels="sampled")

    k = config.student.in_context_prompts
    put("in_context_teacher", "p_trait", _in_context(base, teacher_numbers[:k], config))
    put("in_context_control", "p_trait", _in_context(base, control_numbers[:k], config))
    put(
        "classifier",
        "accuracy",
        classifier_accuracy(teacher_numbers, control_numbers, config, seed),
    )
    for metric, value in first_order_alignment(base, teacher, teacher_numbers, config).items():
        put("engine", metric, value)
    put("teacher", "displacement_norm", float(direction.norm()))

    table, summary = entanglement_table(base, teacher, control_numbers, config)
    for metric, value in summary.items():
        put("entanglement", metric, value)

    record.paired_diffs((c, control) for c, control in PAIRS.items() if control)
    return record.finish(), [{"seed": seed, **r} for r in table], steps
