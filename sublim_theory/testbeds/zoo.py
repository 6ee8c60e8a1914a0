"""Building one configuration's problem: seeded models, student placements and data, per seed.

Everything is seeded from the job, so any process, in any order, builds the same tensors. The
tensors are stacked over seeds (axis 0) for the batched measurement.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.placements import expected_offset, place_student
from sublim_theory.harness.runs import dtype_from_name
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.models.architectures import build_model, make_inputs

__all__ = [
    "INDEPENDENT_SEED_OFFSET",
    "NOISE_SEED_OFFSET",
    "STUDENT_DATA_SEED_OFFSET",
    "TEACHER_DATA_SEED_OFFSET",
    "Problem",
    "build_network",
    "initial_parameters",
    "make_sweep_inputs",
    "prepare_configuration",
]

# Seed offsets (harness.seeds): the independent init and the data of seed s never collide with
# another seed's model. The placement noise must not reuse the init's seed: torch.manual_seed(s)
# (the init) and torch.Generator().manual_seed(s) (the noise) give the same random stream, which
# correlates the noise direction d with theta_0 and biases d^T K v away from zero.
INDEPENDENT_SEED_OFFSET = OFFSETS["zoo.independent_init"]
STUDENT_DATA_SEED_OFFSET = OFFSETS["zoo.student_data"]
TEACHER_DATA_SEED_OFFSET = OFFSETS["zoo.teacher_data"]
NOISE_SEED_OFFSET = OFFSETS["zoo.placement_noise"]


def build_network(arch: str, model: dict[str, Any], seed: int, dtype: torch.dtype) -> nn.Module:
    """A freshly initialized network for the sweep: ``build_model``'s architectures, or ``gpt2``."""
    if arch == "gpt2":
        from sublim_theory.models.gpt2 import build_gpt2

        vocab = max(model["vocab_size"], model["out_features"])
        return build_gpt2(vocab, model["width"], model["depth"], model["seq_len"], seed, dtype)
    return build_model(
        arch,
        model["out_features"],
        in_features=model["in_features"],
        width=model["width"],
        depth=model["depth"],
        vocab_size=model["vocab_size"],
        seq_len=model["seq_len"],
        seed=seed,
        dtype=dtype,
    )


@functools.lru_cache(maxsize=512)
def _initial_parameters(arch: str, model_json: str, seed: int, dtype_name: str) -> Tensor:
    """theta_0 of ``build_network`` for one seed, cached: an init recurs in many configurations."""
    module = build_network(arch, json.loads(model_json), seed, dtype_from_name(dtype_name))
    return FunctionalModel(module).flat_params()


def initial_parameters(arch: str, model: dict[str, Any], seed: int, dtype_name: str) -> Tensor:
    """A fresh copy of the cached theta_0 (callers may not alias the cache)."""
    return _initial_parameters(arch, json.dumps(model, sort_keys=True), seed, dtype_name).clone()


def make_sweep_inputs(
    arch: str, model: dict[str, Any], n: int, seed: int, distribution: str, dtype: torch.dtype
) -> Tensor:
    """Make n inputs for ``arch`` (tokens for the sequence models), from their own seeded generator."""
    if arch == "gpt2":
        vocab = max(model["vocab_size"], model["out_features"])
        return make_inputs("transformer", n, vocab_size=vocab, seq_len=model["seq_len"], seed=seed)
    return make_inputs(
        arch,
        n,
        in_features=model["in_features"],
        image_size=model["image_size"],
        vocab_size=model["vocab_size"],
        seq_len=model["seq_len"],
        distribution=distribution,
        seed=seed,
        dtype=dtype,
    )


@dataclass
class Problem:
    """The tensors of one configuration, stacked over seeds (axis 0 = seed).

    theta0 (S, P) the inits, theta_student (S, P) the placed students, expected_offset (S, P)
    E[Delta | theta_0] (``placements.expected_offset``), x_student the distillation inputs,
    x_teacher/labels the trait task, model the shared architecture.
    """

    model: FunctionalModel
    theta0: Tensor
    theta_student: Tensor
    expected_offset: Tensor
    x_student: Tensor
    x_teacher: Tensor
    labels: Tensor


def prepare_configuration(job: dict[str, Any]) -> Problem:
    """Build the seeded models, student placements and data of one job (deterministic)."""
    arch, kind, scale = job["arch"], job["placement"], job["scale"]
    seeds, model_settings, measure = job["seeds"], job["model"], job["measure"]
    dtype, device = dtype_from_name(measure["dtype"]), torch.device(job["device"])
    template = build_network(arch, model_settings, seeds[0], dtype).to(device)
    model = FunctionalModel(template)
    theta0 = torch.stack(
        [initial_parameters(arch, model_settings, s, measure["dtype"]) for s in seeds]
    ).to(device)
    independent = [
        initial_parameters(arch, model_settings, s + INDEPENDENT_SEED_OFFSET, measure["dtype"]).to(
            device
        )
        for s in seeds
    ]
    theta_s0 = torch.stack(
        [
            place_student(
                model,
                theta0[i],
                kind,
                scale,
                seed=s + NOISE_SEED_OFFSET,
                independent=independent[i],
            )
            for i, s in enumerate(seeds)
        ]
    )
    offsets = torch.stack(
        [
            expected_offset(model, theta0[i], kind, scale, independent=independent[i])
            for i in range(len(seeds))
        ]
    )

    def stacked_inputs(n: int, offset: int, distribution: str) -> Tensor:
        return torch.stack(
            [
                make_sweep_inputs(arch, model_settings, n, s + offset, distribution, dtype)
                for s in seeds
            ]
        ).to(device)

    x_student = stacked_inputs(
        measure["n_inputs"], STUDENT_DATA_SEED_OFFSET, measure["input_distribution"]
    )
    x_teacher = stacked_inputs(measure["n_teacher_inputs"], TEACHER_DATA_SEED_OFFSET, "gaussian")
    n_classes = model(theta0[0], x_teacher[0, :1]).shape[-1]
    labels = torch.stack(
        [
            torch.randint(
                0,
                n_classes,
                (measure["n_teacher_inputs"],),
                generator=torch.Generator().manual_seed(s + TEACHER_DATA_SEED_OFFSET),
            )
            for s in seeds
        ]
    ).to(device)
    return Problem(model, theta0, theta_s0, offsets, x_student, x_teacher, labels)
