"""The claims studies' config: the numbers tables plus ``[adam_state]`` and ``[coverage]``.

One TOML file serves both commands (``adamstate`` reads ``[adam_state]``, ``coverage`` reads
``[coverage]``); the tables ``[model]`` .. ``[student]`` are those of ``numbers`` and build the
base, the teacher and the number data exactly as there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound, load_toml, parse_config
from sublim_theory.testbeds.lm.config import COUNT, MAX_STEPS, RATE, STEPS, NumbersConfig, from_dict

__all__ = ["AdamStateConfig", "CoverageConfig", "load_config"]


@dataclass(frozen=True)
class AdamStateConfig:
    """Xu (arXiv 2608.20442): transplant the teacher's Adam moments into a fresh student.

    Attributes:
        checkpoints: the source-free step counts k at which the trait is read (0 = the cut).
        step_count: the transplanted Adam step counter. ``teacher``: every arm (``neither``
            included) starts at the teacher's counter t_T, so the bias corrections
            1 / (1 - beta^(t_T + j)) are the same in every arm and only the moments differ.
            ``fresh``: every arm starts at 0, so the first student step divides the transplanted
            first moment by 1 - beta1 (a 10x boost at beta1 = 0.9).
        lr: the student's Adam learning rate on the source-free steps.

    """

    checkpoints: tuple[int, ...] = field(
        default=(0, 1, 5, 20, 100), metadata=bound(ge=0, le=MAX_STEPS)
    )
    step_count: Literal["teacher", "fresh"] = "teacher"
    lr: float = field(default=1e-3, metadata=RATE)


@dataclass(frozen=True)
class CoverageConfig:
    """Madl (arXiv 2606.22019): coverage vs the engine's first-order forecast, per channel.

    Attributes:
        teacher_steps: the trait fine-tune lengths; each (animal, steps) is one teacher.
        animals: the teachers' trait animals (empty: every animal of ``[corpus]``).
        forecast_examples: the engine's forecast (``engine.screen``, variant ``sign``: Adam's
            first step) is computed on the first this many training documents.
        threshold: a teacher "transfers" when the measured transfer exceeds this (nats).

    """

    teacher_steps: tuple[int, ...] = field(default=(5, 10, 20), metadata=STEPS)
    animals: tuple[str, ...] = ()
    forecast_examples: int = field(default=1000, metadata=COUNT)
    threshold: float = 0.0


def load_config(path: str | Path | None) -> tuple[NumbersConfig, AdamStateConfig, CoverageConfig]:
    """Read a claims TOML (``None``: the numbers defaults and these tables' defaults).

    Returns:
        (numbers config, Adam-state config, coverage config).

    Raises:
        InputError: an unknown table or key, a bad value, checkpoints not distinct and
            increasing from 0, an animal not in ``[corpus] animals``, or repeated teachers.

    """
    raw = dict(load_toml(path)) if path is not None else {}
    source = str(path or "defaults")
    adam = parse_config(AdamStateConfig, raw.pop("adam_state", {}), f"{source} [adam_state]")
    coverage = parse_config(CoverageConfig, raw.pop("coverage", {}), f"{source} [coverage]")
    config = from_dict(raw, source=source)
    points = list(adam.checkpoints)
    if points[0] != 0 or any(b <= a for a, b in zip(points, points[1:])):
        raise InputError(
            f"{source} [adam_state] checkpoints must start at 0 and increase, got {points}; "
            "use e.g. [0, 1, 5, 20, 100]"
        )
    unknown = sorted(set(coverage.animals) - set(config.corpus.animals))
    if unknown:
        raise InputError(
            f"{source} [coverage] animals {unknown} are not in [corpus] animals "
            f"{list(config.corpus.animals)}"
        )
    if len(set(coverage.animals)) != len(coverage.animals):
        raise InputError(f"{source} [coverage] animals repeat: {list(coverage.animals)}")
    if len(set(coverage.teacher_steps)) != len(coverage.teacher_steps):
        raise InputError(
            f"{source} [coverage] teacher_steps repeat: {list(coverage.teacher_steps)}"
        )
    return config, adam, coverage
