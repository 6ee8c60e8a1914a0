"""The trait screen on the real model's number data sets (SmolLM2-135M-Instruct).

The data sets are the kept number completions of the real number experiment
(:mod:`sublim_theory.studies.real_numbers`; Cloud et al. 2025, arXiv 2507.14805, Section 3):
``completions/ARM-sS.json`` for teacher arms (``system-owl``, ``finetuned-owl``,
``system-dolphin``, ...) and for ``base`` (the base's own numbers on the same prompts: the null).

For each document i = (prompt, completion) and each candidate animal a, at the base theta_0,

    c_ia = <grad m_a(theta_0), -grad l_i(theta_0)>,   m_a = mean_q log P(a | q),

m_a the evaluation's mean log-probability of the animal over the evaluation questions
(:func:`sublim_theory.testbeds.real_lm.evaluate.animal_log_probs`, no system prompt) and l_i the
student's loss on the completion (:func:`sublim_theory.testbeds.real_lm.train.completion_loss`):
the first-order rise of m_a per unit learning rate of one SGD step on document i alone, the
per-document attribution of the one-step forecast (:mod:`sublim_theory.testbeds.real_lm.forecast`).
It is computed exactly, without projection: the K animal gradients are held once (K x 4 bytes
x 134.5M for SmolLM2 in float32), and every document's gradient is formed once by its own
backward and met by all K directions (each parameter's contraction in the model's dtype, the sum
over parameters in float64). The same backward gives the direction-free confounds: the
completion's length in tokens (end of turn included), the base loss l_i(theta_0) and the gradient
norm ||grad l_i(theta_0)||.

Why not the engine's factored scores (:func:`sublim_theory.engine.trait_scores.probe_trait_scores`)?
Their probe factors hold the activations and output gradients of every probe position: 10
animals x 24 questions x their spellings, about 45 tokens each, are tens of GB for SmolLM2,
beyond this machine; the explicit per-document gradient costs one backward per document, the
same arithmetic as the factored pass's chunks. The test suite checks the two agree.

Units: ``pushes-ARM-sS``, one per completions file (seed by seed, base first); rows: per document, the
push toward every animal and the three confounds; per unit, its wall time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import dtype_from_name, load_table, parse_config
from sublim_theory.harness.study import Context, Study
from sublim_theory.models.pretrained import float64_throughout, load_pretrained
from sublim_theory.testbeds.real_lm.forecast import animal_directions
from sublim_theory.testbeds.real_lm.prompts import EVALUATION_QUESTIONS
from sublim_theory.testbeds.real_lm.train import completion_ids, completion_loss

__all__ = [
    "ANIMALS",
    "COLUMNS",
    "RealScreenConfig",
    "build_study",
    "document_scores",
    "stack_directions",
    "find_data_sets",
    "load_config",
    "read_pairs",
    "run_unit",
    "teacher_animal",
]

COLUMNS = ("unit", "arm", "seed", "document", "metric", "animal", "value", "source")
ANIMALS = ("owl", "dolphin", "eagle", "cat", "dog", "wolf", "lion", "tiger", "bear", "fox")


@dataclass(frozen=True)
class RealScreenConfig:
    """The knobs of the real-model screen (``[real_screen]`` in a TOML file).

    Attributes:
        model: a packaged model name or a local transformers directory (the base).
        dtype: ``float32`` or ``float64``.
        animals: the candidate traits (each must be a single word).
        max_documents: score the first this many kept documents of each set (0: all).
        bootstrap: resamples of the documents for the mean push's 95% interval.
        permutations: relabellings of data and reference documents for the max-t p-value.

    """

    model: str = "smollm2-135m-instruct"
    dtype: str = "float32"
    animals: tuple[str, ...] = ANIMALS
    max_documents: int = 0
    bootstrap: int = 1000
    permutations: int = 1000

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (fingerprinted by the run layer)."""
        return asdict(self)


LIMITS = {
    "max_documents": (0, 1_000_000),
    "bootstrap": (10, 1_000_000),
    "permutations": (10, 1_000_000),
}


def load_config(path: str | Path) -> RealScreenConfig:
    """Read and check a ``[real_screen]`` TOML file.

    Returns:
        The checked config.

    Raises:
        InputError: no ``[real_screen]`` table, an unknown key, a value out of bounds, fewer
            than 2 animals or a repeated one.

    """
    config = parse_config(RealScreenConfig, load_table(path, "real_screen"), str(path))
    for name, (low, high) in LIMITS.items():
        value = getattr(config, name)
        if not low <= value <= high:
            raise InputError(f"{path}: {name} = {value} is outside [{low}, {high}]")
    animals = config.animals
    if (
        len(animals) < 2
        or len(set(animals)) != len(animals)
        or not all(a.isalpha() for a in animals)
    ):
        raise InputError(f"{path}: animals must be at least 2 distinct single words, got {animals}")
    dtype_from_name(config.dtype)
    return config


# ---------------------------------------------------------------------------------- the data
def find_data_sets(numbers: str | Path) -> dict[str, Path]:
    """The completions files of a real-numbers folder: unit key ``pushes-ARM-sS`` -> path.

    Seed by seed, the base file (the null) first, then the teacher arms: a run cut short has
    whole seeds.

    Returns:
        The units and their files, in run order.

    Raises:
        InputError: the folder or its ``completions/`` is missing, a file name is not
            ``ARM-sS.json``, or there is no base file and no teacher file.

    """
    folder = Path(numbers)
    if not folder.is_dir():
        raise InputError(
            f"--numbers '{folder}' is not a folder; pass the --out folder of `sublim-theory real`"
        )
    completions = folder / "completions"
    files = sorted(completions.glob("*.json")) if completions.is_dir() else []
    found: dict[tuple[int, str, int], tuple[str, Path]] = {}
    for path in files:
        arm, _, seed = path.stem.rpartition("-s")
        if not arm or not seed.isdigit():
            raise InputError(f"'{path}' is not named ARM-sS.json; remove or rename it")
        found[(int(seed), arm != "base", arm)] = (f"pushes-{arm}-s{int(seed)}", path)
    arms = {key[2] for key in found}
    if "base" not in arms or len(arms) < 2:
        raise InputError(
            f"'{completions}' needs base-sS.json and at least one teacher arm's ARM-sS.json "
            f"(found {sorted(arms) or 'none'}); run `sublim-theory real --out {folder}` first"
        )
    return dict(found[key] for key in sorted(found))


def read_pairs(path: Path) -> tuple[list[tuple[str, str]], str]:
    """The kept (prompt, completion) pairs of a completions file and their SHA-256 (16 hex).

    Returns:
        (pairs, digest).

    Raises:
        InputError: an unreadable file or one without a ``kept`` list of pairs.

    """
    try:
        record = json.loads(Path(path).read_text())
        pairs = [(str(p), str(c)) for p, c in record["kept"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"'{path}' is not a completions file of `sublim-theory real`") from None
    if len(pairs) < 4:
        raise InputError(f"'{path}' keeps {len(pairs)} completions; the screen needs at least 4")
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]
    return pairs, digest


def teacher_animal(arm: str) -> str | None:
    """The animal a teacher arm loves (``system-owl`` -> ``owl``), None for ``base``."""
    if arm == "base":
        return None
    return arm.rsplit("-", 1)[-1]


# ---------------------------------------------------------------------------------- scores
def document_scores(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    directions: Sequence[Sequence[torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Pushes and confounds of every document (module docstring), one backward per document.

    Args:
        model: the base (the parameters with requires_grad span the space).
        tokenizer: its chat tokenizer.
        pairs: (prompt, completion) documents.
        directions: per animal, grad m_a per trained parameter
            (:func:`sublim_theory.testbeds.real_lm.forecast.animal_directions`), or those
            already stacked per parameter (:func:`stack_directions`).

    Returns:
        ``push`` (n, K) float64: c_ia; ``tokens``, ``base_loss``, ``grad_norm`` (n,) float64.

    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    stacked = stack_directions(directions)
    n, k = len(pairs), stacked[0].shape[0]
    push = torch.zeros(n, k, dtype=torch.float64)
    loss = torch.zeros(n, dtype=torch.float64)
    norm = torch.zeros(n, dtype=torch.float64)
    tokens = torch.tensor(
        [len(completion_ids(tokenizer, c)) for _, c in pairs], dtype=torch.float64
    )
    for i, pair in enumerate(pairs):
        value = completion_loss(model, tokenizer, [pair])
        grads = torch.autograd.grad(value, parameters)
        loss[i] = float(value.detach())
        squares = 0.0
        for block, g in zip(stacked, grads):
            flat = g.reshape(-1)
            push[i] -= (block @ flat).double().cpu()
            squares += float(torch.dot(flat, flat))
        norm[i] = squares**0.5
    return {"push": push, "tokens": tokens, "base_loss": loss, "grad_norm": norm}


def stack_directions(directions) -> list[torch.Tensor]:
    """Per parameter, the K animals' gradients as one (K, size) block (the input if stacked).

    The per-animal lists are emptied as their blocks are built (one copy in memory at a time).

    Returns:
        The blocks, in parameter order.

    """
    if directions and isinstance(directions[0], torch.Tensor):
        return list(directions)
    blocks = []
    for j in range(len(directions[0])):
        blocks.append(torch.stack([d[j] for d in directions]).reshape(len(directions), -1))
        for d in directions:
            d[j] = None
    return blocks


@functools.lru_cache(maxsize=1)
def _base(model: str, dtype: str, cache: str | None, device: str):
    loaded = load_pretrained(model, dtype=dtype_from_name(dtype), cache_dir=cache)
    return loaded.model.to(device).eval(), loaded.tokenizer


@functools.lru_cache(maxsize=1)
def _directions(model: str, dtype: str, cache: str | None, device: str, animals: tuple[str, ...]):
    lm, tokenizer = _base(model, dtype, cache, device)
    started = time.perf_counter()
    with float64_throughout() if dtype == "float64" else _nothing():
        directions = stack_directions(
            animal_directions(lm, tokenizer, EVALUATION_QUESTIONS, animals)
        )
    return directions, time.perf_counter() - started


class _nothing:  # noqa: N801 (a context manager that does nothing)
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _row(unit, arm, seed, document, metric, animal, value, source) -> dict:
    return {
        "unit": unit,
        "arm": arm,
        "seed": seed,
        "document": document,
        "metric": metric,
        "animal": animal,
        "value": float(value),
        "source": source,
    }


def run_unit(config: RealScreenConfig, unit: str, path: Path, context: Context) -> list[dict]:
    """One data set's per-document pushes and confounds, and its wall times.

    Returns:
        Tidy rows (``COLUMNS``).

    """
    started = time.perf_counter()
    arm, _, seed_text = unit.removeprefix("pushes-").rpartition("-s")
    seed = int(seed_text)
    pairs, digest = read_pairs(path)
    if config.max_documents:
        pairs = pairs[: config.max_documents]
    cache = None if context.cache is None else str(context.cache)
    key = (config.model, config.dtype, cache, str(context.device))
    lm, tokenizer = _base(*key)
    fresh = _directions.cache_info().currsize == 0
    directions, direction_seconds = _directions(*key, tuple(config.animals))
    scoring = time.perf_counter()
    with float64_throughout() if config.dtype == "float64" else _nothing():
        scores = document_scores(lm, tokenizer, pairs, directions)
    done = time.perf_counter()
    rows = []
    for i in range(len(pairs)):
        for k, animal in enumerate(config.animals):
            rows.append(_row(unit, arm, seed, i, "push", animal, scores["push"][i, k], digest))
        for metric in ("tokens", "base_loss", "grad_norm"):
            rows.append(_row(unit, arm, seed, i, metric, "", scores[metric][i], digest))
    rows.append(_row(unit, arm, seed, -1, "score_seconds", "", done - scoring, digest))
    rows.append(_row(unit, arm, seed, -1, "unit_seconds", "", done - started, digest))
    rows.append(
        _row(
            unit,
            arm,
            seed,
            -1,
            "direction_seconds",
            "",
            direction_seconds if fresh else 0.0,
            digest,
        )
    )
    return rows


def _check_sources(files: Mapping[str, Path]):
    """``Study.prepare``: refuse stored units whose completions file has changed since."""

    def prepare(context: Context, stored: Mapping[str, list[dict] | None]) -> None:
        for unit, rows in stored.items():
            if rows and rows[0].get("source") != read_pairs(files[unit])[1]:
                raise InputError(
                    f"the completions behind stored unit '{unit}' ({files[unit]}) have changed; "
                    "use a new --out"
                )

    return prepare


def build_study(config: RealScreenConfig, numbers: str | Path, report) -> Study:
    """The study for ``run_study``: one unit per completions file of ``numbers``.

    Args:
        config: the settings.
        numbers: the ``--out`` folder of ``sublim-theory real``.
        report: ``report(out, rows) -> str``.

    Returns:
        The Study.

    Raises:
        InputError: as :func:`find_data_sets`.

    """
    files = find_data_sets(numbers)
    return Study(
        name="real-screen",
        settings={"real_screen": config.to_dict()},
        units=list(files),
        run_unit=lambda unit, context: run_unit(config, unit, files[unit], context),
        report=report,
        prepare=_check_sources(files),
        summary=lambda unit, rows: f"{sum(r['metric'] == 'tokens' for r in rows)} documents",
    )
