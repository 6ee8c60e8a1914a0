"""Exact vs projected attributions on the tiny-LM screen: what a random projection of the gradients costs.

Per seed a pretrained base (the screen's), one teacher per animal of ``teachers`` and the base's
own numbers (the null), as in ``studies.screen``. For every data set the first ``screen_examples``
documents are scored against the base's 10 trait directions v_k = grad L_k(theta_0) exactly,
c_ik = <g_i, v_k> (explicit per-example gradients; equal to the jvp screen's ``sgd`` variant),
and through a Gaussian projection to each d in ``dims`` with ``projection_seeds`` seeds,
c~_ik = <P g_i, P v_k> = <g_i, P^T P v_k> (``engine.projection``: the directions w_k = P^T P v_k
are formed once per base and all attributions share one pass of per-example gradients).

Rows per data set (one unit per (seed, data set)): the exact and each projection's forecast
(mean_i attribution per animal) and the animals' ranks under it; per projection the Spearman
correlation of the per-document attributions with the exact ones (per animal), and the overlap
of the top ``filter_fraction`` of documents by attribution toward the animal the exact forecast
ranks first (the screen's filter), projected vs exact.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from sublim_theory.engine import projection
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.screen import data_gradient, trait_gradients
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound
from sublim_theory.testbeds.lm.config import MAX_COUNT, NumbersConfig
from sublim_theory.testbeds.lm.screening import (
    animal_probes,
    number_student_data,
    number_student_loss,
)

__all__ = [
    "ProjectionExperimentConfig",
    "ProjectionSettings",
    "Row",
    "data_set_unit",
    "experiment_config",
    "spearman",
    "top_overlap",
    "trait_directions",
    "with_trait",
]

Row = dict[str, object]


@dataclass(frozen=True)
class ProjectionSettings:
    """The ``[projection]`` table (the other tables are the numbers config's, as the screen's).

    Attributes:
        teachers: animals a teacher is fine-tuned on, one data set each.
        dims: projection dimensions d.
        projection_seeds: independent projections per d (seeds 0 .. n-1, shared by the data
            sets of a base).
        kind: ``gaussian`` (N(0, 1/d) entries) or ``rademacher`` (+-1/sqrt(d)).
        screen_examples: documents scored per data set (the first of each).
        chunk: documents per chunk of per-example gradients.
        filter_fraction: share of documents the filter drops (top by attribution).

    """

    teachers: tuple[str, ...] = ("owl", "dog", "eagle", "lion", "panda")
    dims: tuple[int, ...] = field(default=(16, 256, 4096), metadata=bound(ge=1, le=2**20))
    projection_seeds: int = field(default=3, metadata=bound(ge=1, le=1000))
    kind: Literal["gaussian", "rademacher"] = "gaussian"
    screen_examples: int = field(default=2000, metadata=bound(ge=10, le=MAX_COUNT))
    chunk: int = field(default=250, metadata=bound(ge=1, le=MAX_COUNT))
    filter_fraction: float = field(default=0.1, metadata=bound(gt=0, lt=1))


@dataclass(frozen=True)
class ProjectionExperimentConfig:
    """A numbers config (the trait animal is replaced per teacher) plus ``[projection]``."""

    numbers: NumbersConfig
    projection: ProjectionSettings

    def to_dict(self) -> dict[str, object]:
        """Every setting, as nested plain dicts (for ``run.json``)."""
        return {**self.numbers.to_dict(), "projection": asdict(self.projection)}


def experiment_config(raw: dict, source: str = "config") -> ProjectionExperimentConfig:
    """Build the config from a parsed TOML file (``[projection]`` + the numbers tables).

    Returns:
        The checked config.

    Raises:
        InputError: a bad key or value, teachers not distinct animals of the corpus, or
            repeated dimensions.

    """
    from sublim_theory.harness.runs import parse_config
    from sublim_theory.testbeds.lm.config import from_dict

    raw = dict(raw)
    settings = parse_config(ProjectionSettings, raw.pop("projection", {}), f"{source} [projection]")
    numbers = from_dict(raw, source)
    unknown = [a for a in settings.teachers if a not in numbers.corpus.animals]
    if unknown or len(set(settings.teachers)) != len(settings.teachers):
        raise InputError(
            f"{source} [projection] teachers must be distinct animals of [corpus] animals "
            f"{list(numbers.corpus.animals)}, got {list(settings.teachers)}"
        )
    if len(set(settings.dims)) != len(settings.dims):
        raise InputError(f"{source} [projection] dims must be distinct, got {list(settings.dims)}")
    return ProjectionExperimentConfig(numbers, settings)


def with_trait(numbers: NumbersConfig, animal: str) -> NumbersConfig:
    """The numbers config with ``animal`` as the trait (the teacher's fine-tune target)."""
    return dataclasses.replace(
        numbers, corpus=dataclasses.replace(numbers.corpus, trait_animal=animal)
    )


def trait_directions(
    config: ProjectionExperimentConfig, base: nn.Module, log: Callable[..., None] = print
) -> tuple[Tensor, dict[tuple[int, int], Tensor], dict[tuple[int, int], float]]:
    """The exact trait directions v_k of the base and every projection's w_k = P^T P v_k.

    Returns:
        (v, w, seconds): v (K, p); w[(d, seed)] (K, p); seconds[(d, seed)] to form w.

    """
    model = FunctionalModel(base)
    v = trait_gradients(model, model.flat_params(), animal_probes(config.numbers))
    settings = config.projection
    w, seconds = {}, {}
    for dim in settings.dims:
        for seed in range(settings.projection_seeds):
            start = time.perf_counter()
            w[(dim, seed)] = projection.projected_directions(v, dim, seed, settings.kind)
            seconds[(dim, seed)] = time.perf_counter() - start
        log(f"  projected directions d={dim}: {seconds[(dim, 0)]:.0f}s per projection")
    return v, w, seconds


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ranks 1..n, ties broken by order; continuous data)."""
    a, b = _ranks(np.asarray(x)), _ranks(np.asarray(y))
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def top_overlap(x: np.ndarray, y: np.ndarray, fraction: float) -> float:
    """|top q of x  intersect  top q of y| / |top q|: the filter's agreement (q = ``fraction``)."""
    count = max(1, round(fraction * len(x)))
    top_x = set(np.argsort(-np.asarray(x), kind="stable")[:count].tolist())
    top_y = set(np.argsort(-np.asarray(y), kind="stable")[:count].tolist())
    return len(top_x & top_y) / count


def data_set_unit(
    config: ProjectionExperimentConfig,
    base: nn.Module,
    documents: Tensor,
    directions: tuple[Tensor, dict[tuple[int, int], Tensor], dict[tuple[int, int], float]],
    label: dict[str, object],
    log: Callable[..., None] = print,
) -> list[Row]:
    """Score one data set exactly and through every projection; the tidy rows.

    Rows carry ``label`` plus ``dim`` (0 = exact), ``projection_seed``, ``trait``, ``metric``
    and ``value``; metrics ``forecast`` (mean attribution), ``rank``, ``spearman``,
    ``top_overlap`` (toward the exact forecast's first animal), ``cos`` (exact only:
    cos(mean_i g_i, v_k)), ``seconds`` and ``n_documents``.

    Returns:
        The tidy rows of the data set.

    """
    settings, numbers = config.projection, config.numbers
    names = list(numbers.corpus.animals)
    model = FunctionalModel(base)
    theta = model.flat_params()
    n = min(settings.screen_examples, documents.shape[0])
    inputs, targets = number_student_data(documents[:n])
    loss = number_student_loss(numbers)
    v, w, w_seconds = directions
    keys = list(w)
    stacked = torch.cat([v, *[w[key] for key in keys]])
    start = time.perf_counter()
    scores = projection.gradient_attributions(
        model, theta, inputs, targets, loss, stacked, settings.chunk
    ).numpy()
    seconds = time.perf_counter() - start
    k = len(names)
    exact = scores[:, :k]
    rows: list[Row] = []

    def put(dim: int, seed: int, metric: str, value: float, trait: str = "") -> None:
        rows.append(
            {**label, "dim": dim, "projection_seed": seed, "trait": trait, "metric": metric}
            | {"value": float(value)}
        )

    def forecast_rows(dim: int, seed: int, values: np.ndarray) -> None:
        forecast = values.mean(0)
        order = np.argsort(-forecast, kind="stable")
        for r, j in enumerate(order):
            put(dim, seed, "forecast", forecast[j], names[j])
            put(dim, seed, "rank", r + 1, names[j])

    forecast_rows(0, -1, exact)
    g = data_gradient(model, theta, inputs, targets, loss, settings.chunk)
    cos = (v @ g) / (v.norm(dim=1) * g.norm())
    for j, name in enumerate(names):
        put(0, -1, "cos", float(cos[j]), name)
    put(0, -1, "seconds", seconds)
    put(0, -1, "n_documents", n)
    flagged = int(np.argmax(exact.mean(0)))
    for i, (dim, seed) in enumerate(keys):
        values = scores[:, k * (i + 1) : k * (i + 2)]
        forecast_rows(dim, seed, values)
        for j, name in enumerate(names):
            put(dim, seed, "spearman", spearman(values[:, j], exact[:, j]), name)
        overlap = top_overlap(values[:, flagged], exact[:, flagged], settings.filter_fraction)
        put(dim, seed, "top_overlap", overlap, names[flagged])
        put(dim, seed, "seconds", w_seconds[(dim, seed)])
    log(f"  {label['dataset']}: {n} documents, {len(keys)} projections, {seconds:.0f}s")
    return rows
