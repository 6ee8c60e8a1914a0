"""Benchmark rows for the trait screen: its cost in training epochs, jvp path beside factored.

On the number experiment's LM (``testbeds.lm``: ``training.build_lm``) and N number documents,
for K candidate traits (probes ``-log P(token_k | BOS Q)``; the 10 animals first, then number
tokens, cycling when the vocabulary is smaller than K):

* ``training_epoch``: one epoch of the student's training on the N documents (forward,
  backward and Adam step on minibatches of the student's batch size, as
  ``training.train_student`` runs them): the unit;
* ``screen_jvp[K]``: ``engine.screen.screen`` with ``method="jvp"`` (one jvp over the data per
  trait);
* ``screen_factored[K]``: the same screen with ``method="factored"`` (``engine.trait_scores``:
  one forward and one backward per chunk for every trait).

Both screens are the ``sgd`` variant with the default bootstrap and ``normalize=False`` (the
normalized forecast costs two more jvps per trait on either path and no study reports it); their
ratio is wall time over the epoch's, in the same run. Each row also gives how far the factored
attributions are from the jvp ones (max |difference| / max |jvp attribution|, float32).
Targets (issue 23): ``screen_factored[10]`` <= 1.5 and ``screen_factored[100]`` <= 2.5.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.screen import ScreenResult, TraitProbe, screen
from sublim_theory.errors import InputError
from sublim_theory.studies.bench.experiment import load_average, synchronize
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import CorpusConfig, ModelConfig, NumbersConfig
from sublim_theory.testbeds.lm.screening import number_student_data, number_student_loss

__all__ = [
    "SCREEN_SIZES",
    "SCREEN_TRAITS",
    "bench_screen",
    "number_documents",
    "token_probes",
]

SCREEN_TRAITS = (1, 10, 100)

# size name -> (the LM's config, documents screened, chunk of the screen)
SCREEN_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "config": NumbersConfig(
            model=ModelConfig(d_model=16, n_heads=2, n_layers=1),
            corpus=CorpusConfig(
                n_numbers=20, prompt_len=2, continuation_len=4, animals=("owl", "cat", "dog", "fox")
            ),
        ),
        "documents": 64,
        "chunk": 32,
        "batch": 16,
    },
    # the screen study's model (experiments/configs/screen_default.toml) and its chunk
    "default": {"config": NumbersConfig(), "documents": 1000, "chunk": 500, "batch": None},
    "gpt2": {"config": NumbersConfig(), "documents": 2000, "chunk": 500, "batch": None},
}


def number_documents(config: NumbersConfig, n: int, seed: int = 0) -> Tensor:
    """N well-formed number documents ``BOS NUM x_1 .. x_L EOS`` of the corpus distribution."""
    generator = torch.Generator().manual_seed(seed)
    values = corpus.number_values(config.corpus, n, generator)
    numbers = corpus.vocabulary(config.corpus).number(values)
    head = torch.tensor([corpus.BOS, corpus.NUM]).expand(n, 2)
    return torch.cat([head, numbers, torch.full((n, 1), corpus.EOS)], 1)


def token_probes(config: NumbersConfig, count: int) -> list[TraitProbe]:
    """``count`` probes L_k = -log P(token_k | BOS Q): the animals, then numbers, cycling."""
    vocab = corpus.vocabulary(config.corpus)
    tokens = torch.cat([vocab.animal_ids, vocab.number_ids]).tolist()
    prompt = corpus.question_prompt()

    def probe(k: int) -> TraitProbe:
        token = tokens[k % len(tokens)]
        return TraitProbe(
            f"token{token}#{k}", prompt, lambda z: -torch.log_softmax(z[:, -1], -1)[:, token].mean()
        )

    return [probe(k) for k in range(count)]


def _training_epoch(
    base: torch.nn.Module, documents: Tensor, config: NumbersConfig
) -> Callable[[], None]:
    """One epoch of the student's training (Adam) on the documents, on a fresh copy each time."""
    mask = corpus.continuation_mask(documents[:1].cpu(), config.corpus)[0].to(documents.device)
    size = config.student.batch_size

    def epoch() -> None:
        student = copy.deepcopy(base).train()
        optimizer = torch.optim.Adam(student.parameters(), lr=config.student.lr)
        for start in range(0, documents.shape[0], size):
            batch = documents[start : start + size]
            logits = student(batch[:, :-1])[:, mask]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:][:, mask].reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return epoch


def bench_screen(
    size: str,
    device: str,
    traits: tuple[int, ...] = SCREEN_TRAITS,
    rounds: int = 2,
) -> list[dict[str, Any]]:
    """Time the training epoch and both screens for every K, interleaved; rows as ``bench``.

    One warm-up call of each path (K = 1), then per K ``rounds`` rounds of (epoch, jvp screen,
    factored screen); each path's median over the rounds; ratios to the epoch's median of the
    same K's rounds.

    Raises:
        InputError: an unknown size, K < 1 or rounds < 1.

    """
    if size not in SCREEN_SIZES:
        raise InputError(f"unknown benchmark size '{size}'; choose one of {sorted(SCREEN_SIZES)}")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in traits) or rounds < 1:
        raise InputError(f"screen traits must be integers >= 1 and rounds >= 1, got {traits}")
    setting = SCREEN_SIZES[size]
    config: NumbersConfig = setting["config"]
    if setting["batch"] is not None:
        config = replace(config, student=replace(config.student, batch_size=setting["batch"]))
    base = training.build_lm(config, 0).to(device)
    documents = number_documents(config, setting["documents"]).to(device)
    model = FunctionalModel(base)
    theta = model.flat_params()
    inputs, targets = number_student_data(documents)
    loss = number_student_loss(config)

    def screening(method: str, probes: list[TraitProbe]) -> Callable[[], ScreenResult]:
        return lambda: screen(
            model,
            theta,
            inputs,
            targets,
            loss,
            [replace(p, inputs=p.inputs.to(device)) for p in probes],
            step_size=config.student.lr,
            steps=config.student.steps,
            batch_size=setting["chunk"],
            method=method,
            normalize=False,
        )

    epoch = _training_epoch(base, documents, config)
    for warm in (epoch, *(screening(m, token_probes(config, 1)) for m in ("jvp", "factored"))):
        warm()
    rows: list[dict[str, Any]] = []
    for k in traits:
        probes = token_probes(config, k)
        paths = {
            "training_epoch": epoch,
            f"screen_jvp[{k}]": screening("jvp", probes),
            f"screen_factored[{k}]": screening("factored", probes),
        }
        load = load_average()
        samples: dict[str, list[float]] = {name: [] for name in paths}
        results: dict[str, Any] = {}
        for _ in range(rounds):
            for name, fn in paths.items():
                synchronize(device)
                start = time.perf_counter()
                results[name] = fn()
                synchronize(device)
                samples[name].append(time.perf_counter() - start)
        seconds = {name: statistics.median(values) for name, values in samples.items()}
        jvp, factored = results[f"screen_jvp[{k}]"], results[f"screen_factored[{k}]"]
        gap = float((factored.attributions - jvp.attributions).abs().max())
        gap /= max(float(jvp.attributions.abs().max()), torch.finfo(torch.float64).tiny)
        base_row = {
            "arch": f"numbers-lm(d={config.model.d_model},L={config.model.n_layers})",
            "dtype": str(theta.dtype).replace("torch.", ""),
            "device": device,
            "num_params": model.num_params,
            "batch": int(documents.shape[0]),
            "peak_memory_mb": None,
            "load": load,
        }
        epoch_seconds = seconds["training_epoch"]
        rows.append(
            {
                **base_row,
                "path": f"training_epoch[{k}]",
                "seconds": epoch_seconds,
                "ratio": 1.0,
                "baseline": "itself",
            }
        )
        for name in (f"screen_jvp[{k}]", f"screen_factored[{k}]"):
            rows.append(
                {
                    **base_row,
                    "path": name,
                    "seconds": seconds[name],
                    "ratio": seconds[name] / epoch_seconds,
                    "baseline": f"training_epoch[{k}] (factored vs jvp: max rel. diff {gap:.1e})",
                    "max_relative_difference": gap,
                }
            )
    return rows
