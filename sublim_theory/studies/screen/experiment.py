"""The tiny-LM screening study: teachers per animal, their numbers screened, students, filters.

One unit per (seed, data set), each a pure function of its settings, so the command resumes per
unit. The forecast itself is in sublim_theory.engine.screen; theory/screening.md has the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.screen import (
    ADAM_EPS,
    FILTER_OFFSET,
    NULL_OFFSET,
    VARIANTS,
    ScreenResult,
    concentration,
    data_gradient,
    minibatch_gradient_rms,
    screen,
)
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound
from sublim_theory.harness.study import MAX_SEED
from sublim_theory.testbeds.lm.config import MAX_COUNT, RATE, NumbersConfig
from sublim_theory.testbeds.lm.screening import (
    animal_probes,
    number_student_data,
    number_student_loss,
)

__all__ = [
    "Row",
    "ScreenExperimentConfig",
    "ScreenSettings",
    "base_unit",
    "experiment_config",
    "confound_rows",
    "filter_unit",
    "format_unit",
    "null_unit",
    "one_step_checks",
    "screen_data_set",
    "teacher_documents",
    "teacher_unit",
]


# --------------------------------------------------------------------------------------------
# the experiment: teachers for several animals, their numbers screened against the base
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenSettings:
    """The ``[screen]`` table of a screen config (the other tables are the numbers config's).

    Attributes:
        teachers: animals a teacher is fine-tuned on, one data set each (the others only probed).
        variants: forecast variants measured (``sgd``, ``sign``, ``rms``).
        screen_examples: documents screened for detection (the first of each data set); the
            ``filter_variant`` attributions cover every document (the filter needs them all).
        chunk: documents per jvp chunk.
        bootstrap: resamples of the documents for the 95% intervals.
        rms_batches: minibatch gradients behind the ``rms`` preconditioner.
        drop_fractions: shares q of documents dropped before training (top by attribution, and
            a random q for comparison).
        filter_variant: the variant whose attributions rank documents for the filter.
        cross_init: also screen each teacher's numbers against a base of another init.
        sgd_steps: learning rates of the one-step SGD check (forecast against a real step).
        z_threshold: flag a data set when its largest centred t statistic exceeds this.
        filter_seeds: seeds whose teachers get the filter experiment (run after every seed's
            detection units, so a short run still has the detection table complete); an empty
            list runs no filter.
        method: how the attributions are computed (``engine.screen.METHODS``): ``factored``
            scores every trait from one forward and one backward per chunk
            (``engine.trait_scores``), ``jvp`` one jvp per trait and chunk; equal up to rounding.
        hidden_teachers: animals that get a teacher (and a data set) only on ``hidden_seeds``:
            the hidden-style case (animals never used as teachers elsewhere).
        hidden_seeds: seeds on which the ``hidden_teachers`` are trained (empty: none).
        format_control: per seed, also screen the base's own numbers with the continuation's
            numbers permuted inside each document (same numbers, another format; the tiny
            vocabulary has no separators or spaces to vary), as a null data set.
        confound_examples: documents per data set behind the per-example gradient norm (a
            confound-only baseline; the other baselines use every screened document).
        alpha: a data set is flagged when its empirical p-value against the null data sets is
            at most this.

    """

    teachers: tuple[str, ...] = ("owl", "dog", "eagle", "lion", "panda")
    variants: tuple[Literal["sgd", "sign", "rms"], ...] = VARIANTS
    screen_examples: int = field(default=2000, metadata=bound(ge=2, le=MAX_COUNT))
    chunk: int = field(default=500, metadata=bound(ge=1, le=MAX_COUNT))
    bootstrap: int = field(default=1000, metadata=bound(ge=1, le=10**6))
    rms_batches: int = field(default=16, metadata=bound(ge=1, le=10**5))
    drop_fractions: tuple[float, ...] = field(
        default=(0.05, 0.1, 0.25, 0.5), metadata=bound(gt=0, lt=1)
    )
    filter_variant: Literal["sgd", "sign", "rms"] = "sgd"
    cross_init: bool = True
    sgd_steps: tuple[float, ...] = field(default=(0.01, 0.1, 1.0), metadata=RATE)
    z_threshold: float = field(default=3.0, metadata=bound(gt=0, le=1000))
    filter_seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=bound(ge=0, lt=MAX_SEED))
    method: Literal["jvp", "factored"] = "factored"
    hidden_teachers: tuple[str, ...] = ("cat", "wolf", "tiger", "bear", "fox")
    hidden_seeds: tuple[int, ...] = field(default=(0, 1), metadata=bound(ge=0, lt=MAX_SEED))
    format_control: bool = True
    confound_examples: int = field(default=200, metadata=bound(ge=2, le=MAX_COUNT))
    alpha: float = field(default=0.05, metadata=bound(gt=0, lt=1))


# [screen] lists that may be empty (the config parser refuses empty lists by default)
_MAY_BE_EMPTY = ("filter_seeds", "hidden_teachers", "hidden_seeds")


@dataclass(frozen=True)
class ScreenExperimentConfig:
    """A numbers config (the trait animal is overridden per teacher) plus ``[screen]``."""

    numbers: NumbersConfig
    screen: ScreenSettings

    def to_dict(self) -> dict[str, object]:
        """Every setting, as nested plain dicts (for ``run.json``)."""
        return {**self.numbers.to_dict(), "screen": asdict(self.screen)}


def experiment_config(raw: dict, source: str = "config") -> ScreenExperimentConfig:
    """Build the experiment config from a parsed TOML file (``[screen]`` + numbers tables).

    Raises:
        InputError: a bad key or value, a teacher animal not among the corpus animals, or a
            filter variant not among the measured variants.

    """
    import dataclasses

    from sublim_theory.harness.runs import parse_config
    from sublim_theory.testbeds.lm.config import from_dict

    raw = dict(raw)
    table = dict(raw.pop("screen", {}))
    empty = [k for k in _MAY_BE_EMPTY if k in table and table[k] == []]
    settings = parse_config(
        ScreenSettings, {k: v for k, v in table.items() if k not in empty}, f"{source} [screen]"
    )
    settings = dataclasses.replace(settings, **{k: () for k in empty})
    numbers = from_dict(raw, source)
    unknown = [a for a in settings.teachers if a not in numbers.corpus.animals]
    if unknown or len(set(settings.teachers)) != len(settings.teachers):
        raise InputError(
            f"{source} [screen] teachers must be distinct animals of [corpus] animals "
            f"{list(numbers.corpus.animals)}, got {list(settings.teachers)}"
        )
    hidden = settings.hidden_teachers
    if any(a not in numbers.corpus.animals or a in settings.teachers for a in hidden) or len(
        set(hidden)
    ) != len(hidden):
        raise InputError(
            f"{source} [screen] hidden_teachers must be distinct animals of [corpus] animals "
            f"{list(numbers.corpus.animals)} that are not among teachers "
            f"{list(settings.teachers)}, got {list(hidden)} (or [] for none)"
        )
    if settings.filter_variant not in settings.variants:
        raise InputError(
            f"{source} [screen] filter_variant '{settings.filter_variant}' must be one of the "
            f"measured variants {list(settings.variants)}"
        )
    return ScreenExperimentConfig(numbers, settings)


def _log_probabilities(model: nn.Module, config: NumbersConfig) -> Tensor:
    """The log-probabilities log P(animal_k | BOS Q) of every animal (float64)."""
    from sublim_theory.testbeds.lm import corpus, training

    ids = corpus.vocabulary(config.corpus).animal_ids
    return training.answer_distribution(model, config)[ids].log()


def _epoch_seconds(model: nn.Module, documents: Tensor, config: NumbersConfig) -> float:
    """Seconds of one training epoch's forward and backward passes (minibatches as trained)."""
    import copy
    import time

    from sublim_theory.testbeds.lm import corpus

    student = copy.deepcopy(model).train()
    mask = corpus.continuation_mask(documents[:1], config.corpus)[0]
    size = config.student.batch_size
    start = time.perf_counter()
    for s in range(0, documents.shape[0], size):
        batch = documents[s : s + size]
        logits = student(batch[:, :-1])[:, mask]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:][:, mask].reshape(-1)
        )
        student.zero_grad()
        loss.backward()
    return time.perf_counter() - start


Row = dict[str, object]
FORMAT_OFFSET = 7919  # seed offset of the format control's permutation


def screen_data_set(
    config: ScreenExperimentConfig,
    base: nn.Module,
    documents: Tensor,
    *,
    seed: int,
    label: dict[str, object],
    full_variant: str | None = None,
    variants: Sequence[str] | None = None,
    confounds: bool = False,
    log: Callable[..., None] = print,
) -> tuple[list[Row], dict[str, ScreenResult]]:
    """Screen number documents against ``base`` with every variant; tidy rows and results.

    ``full_variant`` (if given) is screened on every document, the others on the first
    ``screen_examples``. Rows carry ``label`` plus ``variant, trait, metric, value``. The
    attributions come from ``[screen] method``; the K-normalized forecast of
    ``engine.screen.screen`` is not computed (the study reports the raw forecast and z).
    With ``confounds``, also the confound-only baselines of the screened documents
    (:func:`confound_rows`).
    """
    import time

    settings, numbers = config.screen, config.numbers
    model = FunctionalModel(base)
    theta = model.flat_params()
    inputs, targets = number_student_data(documents)
    loss = number_student_loss(numbers)
    probes = animal_probes(numbers)
    rows: list[Row] = []
    results = {}
    n_screen = min(settings.screen_examples, documents.shape[0])
    for variant in settings.variants if variants is None else variants:
        n = documents.shape[0] if variant == full_variant else n_screen
        start = time.perf_counter()
        rms = None
        if variant == "rms":
            rms = minibatch_gradient_rms(
                model,
                theta,
                inputs[:n],
                targets[:n],
                loss,
                numbers.student.batch_size,
                settings.rms_batches,
                seed,
            )
        result = screen(
            model,
            theta,
            inputs[:n],
            targets[:n],
            loss,
            probes,
            step_size=numbers.student.lr,
            steps=numbers.student.steps,
            variant=variant,
            gradient_rms=rms,
            batch_size=settings.chunk,
            bootstrap=settings.bootstrap,
            seed=seed,
            method=settings.method,
            normalize=False,
        )
        seconds = time.perf_counter() - start
        results[variant] = result
        for row in result.rows():
            for metric in ("rank", "forecast", "low", "high", "top_frequency", "z", "z_centered"):
                rows.append(
                    {**label, "variant": variant, "trait": row["trait"], "metric": metric}
                    | {"value": float(row[metric])}
                )
        rows.append(
            {**label, "variant": variant, "trait": "", "metric": "seconds"} | {"value": seconds}
        )
        rows.append(
            {**label, "variant": variant, "trait": "", "metric": "n_screened"} | {"value": float(n)}
        )
        log(
            f"  {label['dataset']} @ {label['init']}: {variant} on {n} docs {seconds:.0f}s, "
            f"ranking {result.ranking[:3]}"
        )
    if confounds:
        rows += confound_rows(config, base, documents[:n_screen], label)
    return rows, results


def confound_rows(
    config: ScreenExperimentConfig, base: nn.Module, documents: Tensor, label: dict
) -> list[Row]:
    """Direction-free statistics of a data set (variant ``confound``): baselines that know no trait.

    ``mean_chars``: the mean length of a document's numbers written as text (``", "``-joined
    decimals); ``mean_base_loss``: mean_i l_i(theta_0), the student's loss under the base;
    ``mean_grad_norm``: mean_i |grad l_i(theta_0)| over the first ``confound_examples``
    documents (explicit per-example gradients). The loss gap (this data set's mean base loss
    minus that of the base's own numbers of the same seed) is formed by the report.
    """
    from torch.func import grad

    from sublim_theory.testbeds.lm import corpus

    numbers, chunk = config.numbers, config.screen.chunk
    vocab = corpus.vocabulary(numbers.corpus)
    is_number = vocab.is_number(documents)
    value = (documents - vocab.number(0)).clamp_min(1).to(torch.float64)
    widths = torch.where(is_number, value.log10().floor() + 1, 0.0)
    count = is_number.sum(1).to(torch.float64)
    chars = widths.sum(1) + 2 * (count - 1).clamp_min(0)
    model = FunctionalModel(base)
    theta = model.flat_params().detach()
    inputs, targets = number_student_data(documents)
    loss = number_student_loss(numbers)
    with torch.no_grad():
        losses = torch.cat(
            [
                loss(model(theta, inputs[s : s + chunk]), targets[s : s + chunk])
                for s in range(0, inputs.shape[0], chunk)
            ]
        )
    m = min(config.screen.confound_examples, inputs.shape[0])

    def norm(i: int) -> float:
        one = lambda t: loss(model(t, inputs[i : i + 1]), targets[i : i + 1]).sum()  # noqa: E731
        return float(grad(one)(theta).double().norm())

    values = {
        "mean_chars": float(chars.mean()),
        "mean_base_loss": float(losses.double().mean()),
        "mean_grad_norm": sum(norm(i) for i in range(m)) / m,
    }
    return [
        {**label, "variant": "confound", "trait": "", "metric": k, "value": v}
        for k, v in values.items()
    ]


def _trait_rows(
    label: dict, variant: str, names: Sequence[str], metric: str, values: Tensor
) -> list[Row]:
    return [
        {**label, "variant": variant, "trait": name, "metric": metric, "value": float(value)}
        for name, value in zip(names, values.tolist())
    ]


def _with_parameters(model: nn.Module, theta: Tensor) -> nn.Module:
    import copy

    moved = copy.deepcopy(model)
    FunctionalModel(moved).load(theta)
    return moved


def one_step_checks(
    config: ScreenExperimentConfig,
    base: nn.Module,
    documents: Tensor,
    results: dict[str, ScreenResult],
    label: dict,
) -> list[Row]:
    """Forecast against one real step on the screened documents: SGD at each rate, Adam's first.

    The ``sgd`` forecast for rate a is a * mean_i c_ik; the measured change is log P(animal_k)
    after theta_0 - a g_D. Adam's first full-batch step is theta_0 - lr g / (|g| + eps), whose
    forecast is the ``sign`` variant's (one step).
    """
    numbers = config.numbers
    model = FunctionalModel(base)
    theta = model.flat_params()
    names = list(numbers.corpus.animals)
    n = int(results["sgd"].attributions.shape[0]) if "sgd" in results else 0
    n = min(n, config.screen.screen_examples)
    rows: list[Row] = []
    if n == 0:
        return rows
    inputs, targets = number_student_data(documents[:n])
    loss = number_student_loss(numbers)
    g = data_gradient(model, theta, inputs, targets, loss, config.screen.chunk)
    before = _log_probabilities(base, numbers)
    mean_c = results["sgd"].attributions[:n].mean(0)
    for rate in config.screen.sgd_steps:
        after = _log_probabilities(
            _with_parameters(base, theta - (rate * g).to(theta.dtype)), numbers
        )
        variant = f"sgd_step_{rate:g}"
        rows += _trait_rows(label, variant, names, "forecast", rate * mean_c)
        rows += _trait_rows(label, variant, names, "measured", after - before)
    if "sign" in results and results["sign"].attributions.shape[0] == n:
        lr = numbers.student.lr
        step = lr * g / (g.abs() + ADAM_EPS)
        after = _log_probabilities(_with_parameters(base, theta - step.to(theta.dtype)), numbers)
        forecast = lr * results["sign"].attributions.mean(0)
        rows += _trait_rows(label, "adam_step", names, "forecast", forecast)
        rows += _trait_rows(label, "adam_step", names, "measured", after - before)
    return rows


def _student_rows(
    base: nn.Module, documents: Tensor, numbers: NumbersConfig, seed: int, label: dict
) -> tuple[list[Row], float]:
    import time

    from sublim_theory.testbeds.lm import training

    start = time.perf_counter()
    run = training.train_student(base, documents, numbers, seed)
    seconds = time.perf_counter() - start
    names = list(numbers.corpus.animals)
    change = _log_probabilities(run.model, numbers) - _log_probabilities(base, numbers)
    rows = _trait_rows(label, "measured", names, "dlogp", change)
    rows += _trait_rows(label, "measured", names, "p", _log_probabilities(run.model, numbers).exp())
    rows.append(
        {**label, "variant": "measured", "trait": "", "metric": "seconds", "value": seconds}
    )
    return rows, seconds


def teacher_unit(
    config: ScreenExperimentConfig,
    seed: int,
    animal: str,
    base: nn.Module,
    base_documents: Tensor,
    cross_base: nn.Module | None,
    log: Callable[..., None] = print,
) -> tuple[list[Row], Tensor]:
    """One teacher: fine-tune, sample, filter, screen (every variant), one-step checks, student.

    Returns:
        Tidy rows ``{seed, dataset, teacher, init, variant, trait, metric, value}`` and the
        teacher's filtered number documents (for :func:`filter_unit`).

    """
    from sublim_theory.studies.numbers.experiment import STUDENT_OFFSET, classifier_accuracy
    from sublim_theory.testbeds.lm import training

    numbers = _with_trait(config.numbers, animal)
    label = {"seed": seed, "dataset": f"teacher-{animal}", "teacher": animal, "init": "base"}
    names = list(numbers.corpus.animals)
    teacher = training.finetune_teacher(base, numbers)
    rows = _trait_rows(label, "teacher", names, "p", _log_probabilities(teacher, numbers).exp())
    documents = teacher_documents(numbers, seed, teacher)

    def put(variant: str, metric: str, value: float, trait: str = "") -> None:
        rows.append(
            {**label, "variant": variant, "trait": trait, "metric": metric, "value": float(value)}
        )

    put("data", "n_documents", documents.shape[0])
    put(
        "data", "classifier_accuracy", classifier_accuracy(documents, base_documents, numbers, seed)
    )
    screened, results = screen_data_set(
        config, base, documents, seed=seed, label=label, confounds=True, log=log
    )
    rows += screened
    rows += one_step_checks(config, base, documents, results, label)
    if cross_base is not None:
        cross_rows, _ = screen_data_set(
            config,
            cross_base,
            documents,
            seed=seed,
            label={**label, "init": "cross"},
            variants=("sgd",),
            log=log,
        )
        rows += cross_rows
    student_rows, _ = _student_rows(base, documents, numbers, seed + STUDENT_OFFSET, label)
    rows += student_rows
    put("cost", "epoch_seconds", _epoch_seconds(base, documents, numbers))

    return rows, documents


def filter_unit(
    config: ScreenExperimentConfig,
    seed: int,
    animal: str,
    base: nn.Module,
    documents: Tensor | None = None,
    log: Callable[..., None] = print,
    runner_up: bool = False,
) -> list[Row]:
    """The filter defense for one teacher's numbers: drop the top q by attribution, or random q.

    The ``filter_variant`` attributions toward the flagged trait (the forecast's first) are
    computed on every document; for each q in ``drop_fractions`` a student is trained on the
    rest, and on the rest after dropping a random q. ``documents`` (the teacher's numbers) are
    recomputed when not given. With ``runner_up`` (the specificity control) the documents are
    ranked by their attribution toward the forecast's *second* trait instead, and no random
    drop is trained (the filter unit has it): if that lowers the teacher's trait as much, the
    filter is not specific to the flagged trait.
    """
    from sublim_theory.studies.numbers.experiment import STUDENT_OFFSET
    from sublim_theory.testbeds.lm import training

    settings = config.screen
    numbers = _with_trait(config.numbers, animal)
    if documents is None:
        documents = teacher_documents(numbers, seed, training.finetune_teacher(base, numbers))
    label = {"seed": seed, "dataset": f"teacher-{animal}", "teacher": animal, "init": "base"}
    names = list(numbers.corpus.animals)
    rows: list[Row] = []

    def put(variant: str, metric: str, value: float, trait: str = "") -> None:
        rows.append(
            {**label, "variant": variant, "trait": trait, "metric": metric, "value": float(value)}
        )

    screened, results = screen_data_set(
        config,
        base,
        documents,
        seed=seed,
        label={**label, "init": "base-all"},
        full_variant=settings.filter_variant,
        variants=(settings.filter_variant,),
        log=log,
    )
    if not runner_up:  # the control's screen repeats the filter unit's rows exactly
        rows += screened
    # the filter: drop the documents pushing hardest toward the flagged trait, or a random share
    flagged_result = results[settings.filter_variant]
    flagged = flagged_result.ranking[1 if runner_up else 0]
    attributions = flagged_result.attributions[:, names.index(flagged)]
    if runner_up:
        put("filter", "runner_up_is_teacher", float(flagged == animal), flagged)
    else:
        put("filter", "flagged_is_teacher", float(flagged == animal), flagged)
        for q, share in concentration(attributions, settings.drop_fractions).items():
            put("filter", f"concentration_{q:g}", share, flagged)
    order = torch.argsort(attributions, descending=True, stable=True)
    generator = torch.Generator().manual_seed(seed + FILTER_OFFSET)
    shuffled = torch.randperm(documents.shape[0], generator=generator)
    target = names.index(animal)
    base_logp = _log_probabilities(base, numbers)
    for q in settings.drop_fractions:
        drop = round(q * documents.shape[0])
        kinds = [("runner_up", order[drop:])] if runner_up else [("top", order[drop:])]
        for kind, kept in kinds + ([] if runner_up else [("random", shuffled[drop:])]):
            run = training.train_student(
                base, documents[kept.sort().values], numbers, seed + STUDENT_OFFSET
            )
            change = _log_probabilities(run.model, numbers) - base_logp
            put("filter", f"dlogp_{kind}_{q:g}", float(change[target]), animal)
        log(f"  teacher-{animal}: filter q={q:g} done")

    return rows


def base_unit(
    config: ScreenExperimentConfig,
    seed: int,
    base: nn.Module,
    base_documents: Tensor,
    log: Callable[..., None] = print,
) -> list[Row]:
    """The null: the base's own numbers screened against the base, and the control student."""
    from sublim_theory.studies.numbers.experiment import STUDENT_OFFSET

    label = {"seed": seed, "dataset": "base", "teacher": "none", "init": "base"}
    rows, results = screen_data_set(
        config, base, base_documents, seed=seed, label=label, confounds=True, log=log
    )
    rows += one_step_checks(config, base, base_documents, results, label)
    student_rows, _ = _student_rows(
        base, base_documents, config.numbers, seed + STUDENT_OFFSET, label
    )
    rows += student_rows
    rows.append(
        {
            **label,
            "variant": "data",
            "trait": "",
            "metric": "n_documents",
            "value": float(base_documents.shape[0]),
        }
    )
    return rows


def teacher_documents(
    numbers: NumbersConfig, seed: int, model: nn.Module, count: int | None = None
) -> Tensor:
    """A model's filtered number documents on the seed's prompts (as ``numbers`` samples them).

    With the base as ``model`` these are the defender's null data: its own numbers. ``count``
    prompts (default ``teacher.n_sequences``).
    """
    from sublim_theory.studies.numbers.experiment import PROMPT_OFFSET, SAMPLING_OFFSET
    from sublim_theory.testbeds.lm import corpus, training

    count = numbers.teacher.n_sequences if count is None else count
    prompts = corpus.number_prompts(numbers.corpus, count, seed + PROMPT_OFFSET)
    raw = training.sample_continuations(model, prompts, numbers, seed + SAMPLING_OFFSET)
    return corpus.filter_numbers(raw, numbers.corpus)[0]


def null_unit(
    config: ScreenExperimentConfig,
    seed: int,
    draw: int,
    base: nn.Module,
    log: Callable[..., None] = print,
) -> list[Row]:
    """An extra null data set: the base's own numbers on fresh prompts, screened (every variant).

    ``screen_examples`` prompts, seeded ``seed + NULL_OFFSET * (draw + 1)`` (prompts and
    sampling), so each draw is a new sample of the null distribution.
    """
    shifted = seed + NULL_OFFSET * (draw + 1)
    documents = teacher_documents(config.numbers, shifted, base, config.screen.screen_examples)
    label = {"seed": seed, "dataset": f"null-{draw}", "teacher": "none", "init": "base"}
    rows, _ = screen_data_set(
        config, base, documents, seed=shifted, label=label, confounds=True, log=log
    )
    return rows


def format_unit(
    config: ScreenExperimentConfig,
    seed: int,
    base: nn.Module,
    base_documents: Tensor,
    log: Callable[..., None] = print,
) -> list[Row]:
    """The format control: the base's own numbers, each continuation's numbers permuted.

    The same numbers in another order inside each document (``corpus.shuffle_within``, seeded
    ``seed + FORMAT_OFFSET``): a data set whose format (and base loss) differs from the base's
    own samples but which carries no trait, screened like a null data set (every variant and
    the confound baselines). Label ``dataset = "format"``, ``teacher = "control"``.
    """
    from sublim_theory.testbeds.lm import corpus

    documents = corpus.shuffle_within(base_documents, config.numbers.corpus, seed + FORMAT_OFFSET)
    label = {"seed": seed, "dataset": "format", "teacher": "control", "init": "base"}
    rows, _ = screen_data_set(
        config, base, documents, seed=seed, label=label, confounds=True, log=log
    )
    return rows


def _with_trait(numbers: NumbersConfig, animal: str) -> NumbersConfig:
    import dataclasses

    return dataclasses.replace(
        numbers, corpus=dataclasses.replace(numbers.corpus, trait_animal=animal)
    )
