"""Knobs of the numbers experiment, read from TOML and checked.

A config file has up to five tables, ``[model]``, ``[corpus]``, ``[pretrain]``, ``[teacher]`` and
``[student]``, each overriding the defaults below (experiments/configs/numbers_default.toml lists
them all). ``runs.parse_config`` builds the frozen dataclasses: unknown tables or keys, values of
the wrong type (``steps = true``, ``d_model = 3.5``), nan/inf and values out of the range in each
field's ``bound`` raise ``InputError``; ``validate`` adds the checks that span fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import bound, load_toml, parse_config

__all__ = [
    "COUNT",
    "MAX_COUNT",
    "MAX_RATE",
    "MAX_SIZE",
    "MAX_STEPS",
    "POSITIVE",
    "RATE",
    "SIZE",
    "STEPS",
    "SECTIONS",
    "CorpusConfig",
    "ModelConfig",
    "NumbersConfig",
    "PretrainConfig",
    "StudentConfig",
    "TeacherConfig",
    "from_dict",
    "load_config",
    "validate",
]

# Upper bounds: far above any run this testbed is meant for, far below a value that exhausts
# memory or overflows a float32 step (a learning rate of 1e308 turns every weight into inf).
MAX_SIZE = 4096  # model widths, heads, layers, lengths of a document, numbers in the vocabulary
MAX_STEPS = 10**6  # optimizer steps
MAX_COUNT = 10**7  # sequences, documents, prompts, examples
MAX_RATE = 100.0  # learning rates and temperatures
POSITIVE = bound(ge=1)  # counts and sizes without an upper bound of their own
SIZE = bound(ge=1, le=MAX_SIZE)
STEPS = bound(ge=1, le=MAX_STEPS)
COUNT = bound(ge=1, le=MAX_COUNT)
RATE = bound(gt=0, le=MAX_RATE)  # learning rates and temperatures


@dataclass(frozen=True)
class ModelConfig:
    """TinyTransformer size (decoder-only, pool="none")."""

    d_model: int = field(default=64, metadata=SIZE)
    n_heads: int = field(default=2, metadata=SIZE)
    n_layers: int = field(default=2, metadata=SIZE)


@dataclass(frozen=True)
class CorpusConfig:
    """The synthetic pretraining corpus.

    Number documents are ``BOS NUM x_1 .. x_L EOS`` with ``L = prompt_len + continuation_len``;
    each sequence follows a noisy arithmetic progression or a random walk mod ``n_numbers``, so
    continuations have real entropy. Question documents are ``BOS Q animal EOS`` (alone, or after
    a number document) with the animal drawn from ``animal_probs`` (uniform when empty).
    """

    n_numbers: int = field(default=100, metadata=bound(ge=2, le=MAX_SIZE))
    prompt_len: int = field(default=3, metadata=SIZE)
    continuation_len: int = field(default=9, metadata=SIZE)
    animals: tuple[str, ...] = (
        "owl",
        "cat",
        "dog",
        "eagle",
        "wolf",
        "lion",
        "tiger",
        "bear",
        "fox",
        "panda",
    )
    animal_probs: tuple[float, ...] = field(default=(), metadata=bound(ge=0, le=1))
    trait_animal: str = "owl"
    question_fraction: float = field(default=0.15, metadata=bound(gt=0, le=1))
    noise: float = field(default=0.25, metadata=bound(ge=0, le=1))
    max_step: int = field(default=9, metadata=SIZE)


@dataclass(frozen=True)
class PretrainConfig:
    """Base-model pretraining (Adam, next-token cross-entropy on every non-pad target)."""

    steps: int = field(default=1500, metadata=STEPS)
    batch_size: int = field(default=64, metadata=COUNT)
    lr: float = field(default=3e-3, metadata=RATE)
    corpus_size: int = field(default=40000, metadata=COUNT)


@dataclass(frozen=True)
class TeacherConfig:
    """The trait fine-tune (Adam on ``BOS Q trait EOS``) and the teacher's sampling."""

    steps: int = field(default=10, metadata=STEPS)
    lr: float = field(default=1e-3, metadata=RATE)
    n_sequences: int = field(default=20000, metadata=COUNT)
    temperature: float = field(default=1.0, metadata=RATE)


@dataclass(frozen=True)
class StudentConfig:
    """Student fine-tunes on number continuations (loss on the continuation tokens only)."""

    steps: int = field(default=100, metadata=STEPS)
    lr: float = field(default=1e-3, metadata=RATE)
    batch_size: int = field(default=256, metadata=COUNT)
    optimizer: Literal["adam", "sgd"] = "adam"
    labels: Literal["sampled", "soft"] = "sampled"
    shuffles: bool = True
    data_order: bool = True
    in_context_prompts: int = field(default=500, metadata=COUNT)
    alignment_inputs: int = field(default=256, metadata=COUNT)


@dataclass(frozen=True)
class NumbersConfig:
    """Every knob of one run of the experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain JSON-able values (``dataclasses.asdict``)."""
        return asdict(self)

    def base_key(self, init_seed: int, corpus_seed: int, order_seed: int) -> str:
        """Hash of what determines a pretrained base: model, corpus, pretraining, its seeds."""
        payload = {
            "model": asdict(self.model),
            "corpus": asdict(self.corpus),
            "pretrain": asdict(self.pretrain),
            "init_seed": init_seed,
            "corpus_seed": corpus_seed,
            "order_seed": order_seed,
            "format": 1,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = {
    "model": ModelConfig,
    "corpus": CorpusConfig,
    "pretrain": PretrainConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
}


def validate(config: NumbersConfig) -> NumbersConfig:
    """The checks that span fields (types and ranges are checked by ``parse_config``).

    Returns:
        The config, unchanged.

    Raises:
        InputError: naming the table and key at fault.

    """
    m, c = config.model, config.corpus
    if m.d_model % m.n_heads:
        raise InputError(f"[model] d_model={m.d_model} must be divisible by n_heads={m.n_heads}")
    if len(c.animals) < 2 or len(set(c.animals)) != len(c.animals):
        raise InputError(f"[corpus] animals must be >= 2 distinct names, got {list(c.animals)}")
    if c.trait_animal not in c.animals:
        raise InputError(
            f"[corpus] trait_animal '{c.trait_animal}' is not in animals {list(c.animals)}"
        )
    if c.animal_probs:
        if len(c.animal_probs) != len(c.animals):
            raise InputError("[corpus] animal_probs must be one non-negative number per animal")
        # the probabilities are read from decimal text: 1e-6 covers their rounding many times over
        if abs(sum(c.animal_probs) - 1) > 1e-6:
            raise InputError(f"[corpus] animal_probs must sum to 1, got {sum(c.animal_probs)}")
    return config


def from_dict(data: dict[str, Any], source: str = "config") -> NumbersConfig:
    """Build a config from nested dicts (a parsed TOML file); unknown names are errors.

    Returns:
        The config.

    Raises:
        InputError: for an unknown table or key, a value of the wrong type or out of range.

    """
    corpus_table = data.get("corpus")
    if isinstance(corpus_table, dict) and corpus_table.get("animal_probs") == []:
        # ``animal_probs = []`` is the documented spelling of the default (uniform answers)
        data = {**data, "corpus": {k: v for k, v in corpus_table.items() if k != "animal_probs"}}
    return validate(parse_config(NumbersConfig, data, source))


def load_config(path: str | Path | None) -> NumbersConfig:
    """Read a TOML config (``None``: the defaults, identical to numbers_default.toml).

    Returns:
        The config.

    Raises:
        InputError: for a missing, unreadable or invalid file, or a bad value in it.

    """
    if path is None:
        return validate(NumbersConfig())
    return from_dict(load_toml(path), source=str(path))
