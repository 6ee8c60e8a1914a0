"""Knobs of the numbers experiment, read from TOML and checked.

A config file has up to five tables, ``[model]``, ``[corpus]``, ``[pretrain]``, ``[teacher]`` and
``[student]``, each overriding the defaults below (experiments/configs/numbers_default.toml lists
them all). Unknown tables or keys and values of the wrong type or range raise ``InputError``.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sublim_theory.errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    """TinyTransformer size (decoder-only, pool="none")."""

    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2


@dataclass(frozen=True)
class CorpusConfig:
    """The synthetic pretraining corpus.

    Number documents are ``BOS NUM x_1 .. x_L EOS`` with ``L = prompt_len + continuation_len``;
    each sequence follows a noisy arithmetic progression or a random walk mod ``n_numbers``, so
    continuations have real entropy. Question documents are ``BOS Q animal EOS`` (alone, or after
    a number document) with the animal drawn from ``animal_probs`` (uniform when empty).
    """

    n_numbers: int = 100
    prompt_len: int = 3
    continuation_len: int = 9
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
    animal_probs: tuple[float, ...] = ()
    trait_animal: str = "owl"
    question_fraction: float = 0.15
    noise: float = 0.25
    max_step: int = 9


@dataclass(frozen=True)
class PretrainConfig:
    """Base-model pretraining (Adam, next-token cross-entropy on every non-pad target)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    corpus_size: int = 40000


@dataclass(frozen=True)
class TeacherConfig:
    """The trait fine-tune (Adam on ``BOS Q trait EOS``) and the teacher's sampling."""

    steps: int = 10
    lr: float = 1e-3
    n_sequences: int = 20000
    temperature: float = 1.0


@dataclass(frozen=True)
class StudentConfig:
    """Student fine-tunes on number continuations (loss on the continuation tokens only)."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 256
    optimizer: str = "adam"
    labels: str = "sampled"
    shuffles: bool = True
    data_order: bool = True
    in_context_prompts: int = 500
    alignment_inputs: int = 256


@dataclass(frozen=True)
class NumbersConfig:
    """Every knob of one run of the experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)

    def to_dict(self) -> dict[str, Any]:
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
OPTIMIZERS = ("adam", "sgd")
LABELS = ("sampled", "soft")


def _coerce(section: str, name: str, default: Any, value: Any) -> Any:
    where = f"[{section}] {name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise InputError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise InputError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    raise InputError(f"{where}: unsupported value {value!r}")  # pragma: no cover


def validate(config: NumbersConfig) -> NumbersConfig:
    """Check ranges and cross-field constraints; return the config unchanged."""
    m, c, p, t, s = config.model, config.corpus, config.pretrain, config.teacher, config.student
    positive = {
        "[model] d_model": m.d_model,
        "[model] n_heads": m.n_heads,
        "[model] n_layers": m.n_layers,
        "[corpus] n_numbers": c.n_numbers,
        "[corpus] prompt_len": c.prompt_len,
        "[corpus] continuation_len": c.continuation_len,
        "[corpus] max_step": c.max_step,
        "[pretrain] steps": p.steps,
        "[pretrain] batch_size": p.batch_size,
        "[pretrain] corpus_size": p.corpus_size,
        "[teacher] steps": t.steps,
        "[teacher] n_sequences": t.n_sequences,
        "[student] steps": s.steps,
        "[student] batch_size": s.batch_size,
        "[student] in_context_prompts": s.in_context_prompts,
        "[student] alignment_inputs": s.alignment_inputs,
    }
    for name, value in positive.items():
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if m.d_model % m.n_heads:
        raise InputError(f"[model] d_model={m.d_model} must be divisible by n_heads={m.n_heads}")
    for name, value in {
        "[pretrain] lr": p.lr,
        "[teacher] lr": t.lr,
        "[student] lr": s.lr,
        "[teacher] temperature": t.temperature,
    }.items():
        if not value > 0:
            raise InputError(f"{name} must be > 0, got {value}")
    for name, value in {
        "[corpus] question_fraction": c.question_fraction,
        "[corpus] noise": c.noise,
    }.items():
        if not 0 <= value <= 1:
            raise InputError(f"{name} must be in [0, 1], got {value}")
    if c.question_fraction <= 0:
        raise InputError("[corpus] question_fraction must be > 0: the base must learn the question")
    if len(c.animals) < 2 or len(set(c.animals)) != len(c.animals):
        raise InputError(f"[corpus] animals must be >= 2 distinct names, got {list(c.animals)}")
    if c.trait_animal not in c.animals:
        raise InputError(
            f"[corpus] trait_animal '{c.trait_animal}' is not in animals {list(c.animals)}"
        )
    if c.animal_probs:
        if len(c.animal_probs) != len(c.animals) or any(q < 0 for q in c.animal_probs):
            raise InputError("[corpus] animal_probs must be one non-negative number per animal")
        if abs(sum(c.animal_probs) - 1) > 1e-6:
            raise InputError(f"[corpus] animal_probs must sum to 1, got {sum(c.animal_probs)}")
    if s.optimizer not in OPTIMIZERS:
        raise InputError(
            f"[student] optimizer must be one of {list(OPTIMIZERS)}, got '{s.optimizer}'"
        )
    if s.labels not in LABELS:
        raise InputError(f"[student] labels must be one of {list(LABELS)}, got '{s.labels}'")
    return config


def from_dict(data: dict[str, Any], source: str = "config") -> NumbersConfig:
    """Build a config from nested dicts (a parsed TOML file); unknown names are errors."""
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise InputError(
            f"{source}: unknown table(s) {sorted(unknown)}; expected {sorted(SECTIONS)}"
        )
    parts = {}
    for section, cls in SECTIONS.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise InputError(f"{source}: [{section}] must be a table")
        defaults = cls()
        known = {f.name for f in fields(cls)}
        bad = set(values) - known
        if bad:
            raise InputError(
                f"{source}: unknown key(s) {sorted(bad)} in [{section}]; expected {sorted(known)}"
            )
        coerced = {k: _coerce(section, k, getattr(defaults, k), v) for k, v in values.items()}
        parts[section] = replace(defaults, **coerced)
    return validate(NumbersConfig(**parts))


def load_config(path: str | Path | None) -> NumbersConfig:
    """Read a TOML config (``None``: the defaults, identical to numbers_default.toml)."""
    if path is None:
        return validate(NumbersConfig())
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"config file '{path}' does not exist; pass a TOML file like "
            "experiments/configs/numbers_default.toml"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"config file '{path}' is not valid TOML: {error}") from error
    return from_dict(data, source=str(path))
