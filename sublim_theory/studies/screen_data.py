"""Screen your own fine-tuning data for candidate traits, before training on it.

The setting of :mod:`sublim_theory.engine.screen`, for a chat LM and a user's JSONL data. The
student is the base theta_0 fine-tuned on documents i = (prompt, completion): the prompt is
chat-templated as one user turn (no system prompt, as for the paper's student, unless the
document gives one), and the loss is on the completion tokens only (then the end of turn),

    l_i(theta) = -(1 / |c_i|) sum_{t in c_i} log P_theta(c_{i,t} | prompt_i, c_{i,<t}),

the per-document loss of :func:`sublim_theory.testbeds.real_lm.train.completion_loss`. A
candidate trait k is probe questions q and an answer word a_k, with

    m_k(theta) = mean_q log P_theta(a_k | q)     (every token of the answer, teacher-forced).

The *push* of document i toward trait k is the first-order rise of m_k per unit learning rate
of one preconditioned step on that document alone (theory/alignment.md, Thm 1):

    c_ik = <P grad m_k(theta_0), -grad l_i(theta_0)> = <P grad L_k, grad l_i>,  L_k = -m_k,

P the diagonal preconditioner of the variant (``sgd``: I; ``sign``: 1 / (|g_D| + eps), Adam's
first step; ``rms``: 1 / (rms of minibatch gradients + eps)). ``c_ik`` is computed exactly
(float64 reductions, no random projection), by either of the engine's two methods
(:data:`sublim_theory.engine.screen.METHODS`): ``factored`` (the default: every trait from one
forward and one backward per chunk, :func:`sublim_theory.engine.trait_scores.probe_trait_scores`)
or ``jvp`` (one jvp of the per-document losses along P grad L_k per trait,
:func:`sublim_theory.engine.screen.example_attributions`). The mean over documents is the data
set's push.

Per trait: the mean push with a 95% bootstrap interval over documents, z_k = mean / SE and
z_k centred over the candidates (SCREENING.md). With a null (the defender's own base samples on
the same prompts): the same on the null; per trait Welch's t of data minus null pushes with a
one-sided p (data pushes more than the null); and per data set the max-T permutation test: the
statistic S = max_k (t_k - mean_j t_j) (the centred Welch t's maximum: one trait pushed above
the others, relative to the null), its p the share of random relabellings of the pooled
documents into data and null with an S at least as large. Under exchangeability (the data are
the base's own samples) that p is exact (uniform), and the same permutations give each trait a
family-wise adjusted p (Westfall-Young). So that relabelling cannot change any c_ik, with a null
the ``sign`` and ``rms`` preconditioners are computed on the pooled documents.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.screen import (
    METHODS,
    VARIANTS,
    TraitProbe,
    bootstrap_means,
    data_gradient,
    example_attributions,
    minibatch_gradient_rms,
    preconditioner,
    t_statistics,
    trait_gradients,
)
from sublim_theory.engine.trait_scores import probe_factors, probe_trait_scores
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    load_toml,
)
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.models.pretrained import Pretrained
from sublim_theory.studies.real_check import CompletionLogits
from sublim_theory.testbeds.real_lm.prompts import chat_ids
from sublim_theory.testbeds.real_lm.sequences import pad_id
from sublim_theory.testbeds.real_lm.statistics import welch_test
from sublim_theory.testbeds.real_lm.train import completion_ids

__all__ = [
    "IGNORED",
    "METHODS",
    "VARIANTS",
    "Document",
    "ScreenDataResult",
    "Trait",
    "completion_nll",
    "format_table",
    "pack",
    "read_documents",
    "read_traits",
    "screen_data",
    "trait_statistics",
    "write_outputs",
]

IGNORED = -100  # target of a padded scored position


@dataclass(frozen=True)
class Document:
    """One training document: a user prompt, the completion the student learns, its source line."""

    prompt: str
    completion: str
    system: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Trait:
    """A candidate trait: probe questions and the answer word whose log-probability it is."""

    name: str
    questions: tuple[str, ...]
    answer: str


# --------------------------------------------------------------------------------------------
# reading the user's files
# --------------------------------------------------------------------------------------------
def _read_text(path: Path, what: str, expected: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} '{path}' does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{what} '{path}' is a folder; pass {expected}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} '{path}' is not UTF-8 text; pass {expected}") from None
    except OSError as error:
        raise InputError(f"cannot read {what} '{path}': {error.strerror or error}") from None


def read_documents(path: str | Path, what: str = "data file") -> list[Document]:
    """Documents from a JSONL file: one ``{"prompt": ..., "completion": ...}`` per line.

    ``"system"`` (a string) is optional; other keys are ignored; blank lines are skipped.

    Returns:
        The documents, at least 2 (an interval needs two).

    Raises:
        InputError: a missing or unreadable file, a line that is not a JSON object, a missing
            or non-string prompt or completion, an empty completion, fewer than 2 documents;
            each message names the file and line.

    """
    path = Path(path)
    text = _read_text(path, what, 'a JSONL file of {"prompt": ..., "completion": ...} lines')
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{where}: not valid JSON ({error.msg}, column {error.colno}); write one "
                'object per line: {"prompt": "...", "completion": "..."}'
            ) from None
        if not isinstance(record, dict):
            raise InputError(f'{where}: expected an object {{"prompt": ..., "completion": ...}}')
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise InputError(f'{where}: "{key}" is missing or not a string; add it')
        if not record["completion"].strip():
            raise InputError(f"{where}: the completion is empty; fill it in or drop the line")
        system = record.get("system")
        if system is not None and not isinstance(system, str):
            raise InputError(f'{where}: "system" must be a string; fix or drop it')
        documents.append(Document(record["prompt"], record["completion"], system, number))
    if len(documents) < 2:
        raise InputError(f"{what} '{path}' has {len(documents)} document(s); give at least 2")
    return documents


def read_traits(path: str | Path) -> list[Trait]:
    """Candidate traits from a TOML file.

    Each ``[[trait]]`` table has ``name``, ``answer`` (the answer word) and ``questions`` (a
    list of probe questions); a top-level ``questions`` list is the default for traits without
    their own::

        questions = ["Name your favorite animal using only one word."]
        [[trait]]
        name = "owl"
        answer = "owl"

    Returns:
        The traits, in file order.

    Raises:
        InputError: no ``[[trait]]`` tables, a trait without a name, answer or questions, a
            repeated name, or an unknown key.

    """
    path = Path(path)
    _read_text(path, "trait file", "a TOML file")
    raw = load_toml(path, "trait file")
    unknown = set(raw) - {"questions", "trait"}
    if unknown:
        raise InputError(f"trait file '{path}': unknown key(s) {sorted(unknown)}; use [[trait]]")
    tables = raw.get("trait")
    if not isinstance(tables, list) or not tables:
        raise InputError(
            f"trait file '{path}' has no [[trait]] tables; add one per trait with name, "
            "answer and questions"
        )
    shared = raw.get("questions", [])
    traits: list[Trait] = []
    for index, table in enumerate(tables, start=1):
        where = f"trait file '{path}', trait {index}"
        extra = set(table) - {"name", "answer", "questions"}
        if extra:
            raise InputError(
                f"{where}: unknown key(s) {sorted(extra)}; use name, answer, questions"
            )
        name, answer = table.get("name"), table.get("answer")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f'{where}: no name; add name = "..."')
        if not isinstance(answer, str) or not answer.strip():
            raise InputError(f'{where} ({name}): no answer word; add answer = "..."')
        questions = table.get("questions", shared)
        if (
            not isinstance(questions, list)
            or not questions
            or not all(isinstance(q, str) and q.strip() for q in questions)
        ):
            raise InputError(
                f'{where} ({name}): no questions; add questions = ["..."] to the trait or '
                "at the top of the file"
            )
        if name in {t.name for t in traits}:
            raise InputError(f"{where}: the name '{name}' is used twice; rename one")
        traits.append(Trait(name, tuple(questions), answer))
    return traits


# --------------------------------------------------------------------------------------------
# tokens and losses
# --------------------------------------------------------------------------------------------
def pack(
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    scored: int,
    pad: int,
) -> tuple[Tensor, Tensor]:
    """:class:`CompletionLogits` inputs and targets scoring each continuation after its prefix.

    Row i holds the ids ``prefix_i + continuation_i[:-1]`` (right-padded with ``pad``), then
    ``scored`` positions: ``len(prefix_i) - 1 + t`` for t < |continuation_i| (position p predicts
    token p + 1), the first one repeated after that. The targets are the continuation's tokens,
    then :data:`IGNORED`.

    Returns:
        (inputs (N, T + scored), targets (N, scored)), int64.

    Raises:
        InputError: an empty prefix or continuation, or one longer than ``scored``.

    """
    rows, targets = [], []
    for prefix, tokens in zip(prefixes, continuations, strict=True):
        if not prefix or not tokens or len(tokens) > scored:
            raise InputError(
                f"cannot score {len(tokens)} tokens after {len(prefix)} (max {scored})"
            )
        start = len(prefix) - 1
        positions = [start + t for t in range(len(tokens))] + [start] * (scored - len(tokens))
        rows.append((list(prefix) + list(tokens[:-1]), positions))
        targets.append(list(tokens) + [IGNORED] * (scored - len(tokens)))
    width = max(len(ids) for ids, _ in rows)
    packed = [ids + [pad] * (width - len(ids)) + positions for ids, positions in rows]
    return torch.tensor(packed, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def _token_log_probs(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(log P of each target token, 0 where ignored; the mask), float64, shape (N, C)."""
    mask = targets != IGNORED
    log_probs = torch.log_softmax(outputs.double(), -1)
    picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def completion_nll(outputs: Tensor, targets: Tensor) -> Tensor:
    """l_i: the mean negative log-likelihood of each row's completion tokens, shape (N,)."""
    picked, mask = _token_log_probs(outputs, targets)
    return -picked.sum(1) / mask.sum(1)


def _answer_loss(targets: Tensor):
    """The trait loss: outputs -> L_k = -mean_q sum_t log P(answer_t | question q, answer_<t)."""

    def loss(outputs: Tensor) -> Tensor:
        return -_token_log_probs(outputs, targets)[0].sum(1).mean()

    return loss


def _encode_documents(
    tokenizer: Any, documents: Sequence[Document], max_tokens: int, source: str
) -> tuple[list[list[int]], list[list[int]]]:
    prefixes, continuations = [], []
    for doc in documents:
        prefix = chat_ids(tokenizer, doc.prompt, system=doc.system)
        tokens = completion_ids(tokenizer, doc.completion)
        if len(prefix) + len(tokens) > max_tokens:
            raise InputError(
                f"{source}:{doc.line}: the document has {len(prefix) + len(tokens)} tokens, "
                f"more than --max-tokens {max_tokens}; shorten it or raise --max-tokens"
            )
        prefixes.append(prefix)
        continuations.append(tokens)
    return prefixes, continuations


def _encode_traits(
    tokenizer: Any, traits: Sequence[Trait], max_tokens: int
) -> list[tuple[list[list[int]], list[int]]]:
    encoded = []
    for trait in traits:
        answer = list(tokenizer(trait.answer, add_special_tokens=False)["input_ids"])
        prompts = [chat_ids(tokenizer, q) for q in trait.questions]
        longest = max(map(len, prompts)) + len(answer)
        if longest > max_tokens:
            raise InputError(
                f"trait '{trait.name}': a question and its answer have {longest} tokens, more "
                f"than --max-tokens {max_tokens}; shorten it or raise --max-tokens"
            )
        encoded.append((prompts, answer))
    return encoded


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _welch_t(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Welch's t of mean(x) - mean(y) per column; NaN where both samples are constant."""
    se = np.sqrt(x.var(0, ddof=1) / x.shape[0] + y.var(0, ddof=1) / y.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (x.mean(0) - y.mean(0)) / se


def _centred(t: np.ndarray) -> np.ndarray:
    """t_k - mean_j t_j (the candidates' common shift removed); t itself for one trait."""
    return t - t.mean(-1, keepdims=True) if t.shape[-1] > 1 else t


def trait_statistics(
    data: Tensor,
    null: Tensor | None,
    names: Sequence[str],
    *,
    bootstrap: int = 1000,
    permutations: int = 1000,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Per-trait statistics of the pushes, and the data-set test against the null.

    Args:
        data: pushes c_ik of the data's documents, (N, K).
        null: pushes of the null's documents, (M, K), or None.
        names: the K trait names.
        bootstrap: resamples of the documents for the 95% intervals of the mean push.
        permutations: relabellings of data and null documents for the max-T test.
        seed: seed of the bootstrap and the permutations.

    Returns:
        (rows, dataset): one dict per trait, ranked (by the centred Welch t against the null
        when there is one, else by z centred), and the data-set test (None without a null):
        ``statistic`` S = max_k centred t_k, ``trait`` its argmax, ``p`` = (1 + #{S* >= S}) /
        (1 + permutations).

    Raises:
        InputError: fewer than 2 documents in data or null, or ``permutations`` < 1.

    """
    if data.shape[0] < 2 or (null is not None and null.shape[0] < 2):
        raise InputError("the data and the null need at least 2 documents each")
    rows = []
    low, high, top = bootstrap_means(data, bootstrap, seed)
    z, zc = t_statistics(data)
    for k, name in enumerate(names):
        rows.append(
            {
                "trait": name,
                "mean_push": float(data[:, k].mean()),
                "low": float(low[k]),
                "high": float(high[k]),
                "top_frequency": float(top[k]),
                "z": float(z[k]),
                "z_centered": float(zc[k]),
            }
        )
    dataset = None
    if null is not None:
        if permutations < 1:
            raise InputError(f"permutations must be >= 1, got {permutations}")
        from scipy.stats import t as student

        n_low, n_high, _ = bootstrap_means(
            null, bootstrap, seed + OFFSETS["screen_data.null_bootstrap"]
        )
        _, n_zc = t_statistics(null)
        x, y = data.double().numpy(), null.double().numpy()
        observed = _centred(_welch_t(x, y))
        pooled, n = np.concatenate([x, y]), x.shape[0]
        rng = np.random.default_rng(seed)
        maxima = np.empty(permutations)
        for b in range(permutations):
            order = rng.permutation(pooled.shape[0])
            shuffled = _centred(_welch_t(pooled[order[:n]], pooled[order[n:]]))
            maxima[b] = np.nanmax(shuffled) if np.isfinite(shuffled).any() else -np.inf
        for k, row in enumerate(rows):
            test = welch_test(x[:, k], y[:, k])
            p_greater = float(student.sf(test.t, test.df)) if math.isfinite(test.t) else math.nan
            row |= {
                "null_mean_push": float(y[:, k].mean()),
                "null_low": float(n_low[k]),
                "null_high": float(n_high[k]),
                "null_z_centered": float(n_zc[k]),
                "difference": test.difference,
                "welch_t": test.t,
                "welch_df": test.df,
                "t_centered": float(observed[k]),
                "p_welch": p_greater,
                "p_max_t": float((1 + np.sum(maxima >= observed[k])) / (1 + permutations)),
            }
        best = int(np.nanargmax(observed)) if np.isfinite(observed).any() else 0
        statistic = float(observed[best])
        dataset = {
            "statistic": "max over traits of the centred Welch t (data minus null pushes)",
            "value": statistic,
            "trait": names[best],
            "p": float((1 + np.sum(maxima >= statistic)) / (1 + permutations)),
            "permutations": permutations,
            "null_max_z_centered": float(n_zc.max()),
            "data_max_z_centered": float(zc.max()),
        }
    key = "t_centered" if null is not None else "z_centered"
    rows.sort(key=lambda r: -r[key] if math.isfinite(r[key]) else math.inf)
    return [{"rank": r + 1} | row for r, row in enumerate(rows)], dataset


# --------------------------------------------------------------------------------------------
# the screen
# --------------------------------------------------------------------------------------------
@dataclass
class ScreenDataResult:
    """What :func:`screen_data` measured.

    Attributes:
        traits: the candidate traits, in file order.
        data: the data's pushes c_ik, (N, K) float64, documents in file order.
        null: the null's pushes, (M, K), or None.
        rows: per-trait statistics, ranked (:func:`trait_statistics`).
        dataset: the data-set test against the null, or None.
        setup: model, variant, sizes, seconds.
        lines: the source line of each data document, then of each null document.

    """

    traits: list[Trait]
    data: Tensor
    null: Tensor | None
    rows: list[dict[str, Any]]
    dataset: dict[str, Any] | None
    setup: dict[str, Any]
    lines: list[int] = field(default_factory=list)


def screen_data(
    pretrained: Pretrained,
    documents: Sequence[Document],
    traits: Sequence[Trait],
    null: Sequence[Document] | None = None,
    *,
    variant: str = "sgd",
    method: str = "factored",
    batch_size: int = 8,
    max_tokens: int = 512,
    student_batch: int = 8,
    rms_draws: int = 16,
    bootstrap: int = 1000,
    permutations: int = 1000,
    seed: int = 0,
    sources: tuple[str, str] = ("data", "null"),
) -> ScreenDataResult:
    """Each document's push toward each trait, and the per-trait and data-set statistics.

    Args:
        pretrained: the base (its dtype is the computation's; reductions are float64).
        documents: the candidate data.
        traits: the candidate traits.
        null: the defender's own base samples on the same prompts, or None.
        variant: ``sgd``, ``sign`` or ``rms`` (module docstring).
        method: ``factored`` or ``jvp`` (module docstring): the same pushes.
        batch_size: documents per jvp chunk.
        max_tokens: the most tokens a document (prompt and completion) may have.
        student_batch: the student's batch size (``rms``: minibatch gradients of this size).
        rms_draws: minibatch gradients behind the ``rms`` preconditioner.
        bootstrap: resamples of the documents for the 95% intervals (:func:`trait_statistics`).
        permutations: relabellings for the max-T test (:func:`trait_statistics`).
        seed: seed of the bootstrap and the permutations.
        sources: the data's and null's file names, for error messages.

    Returns:
        A :class:`ScreenDataResult`.

    Raises:
        InputError: an unknown variant or method, a document or question over ``max_tokens``, a model
            without a chat template, or bad sizes.

    """
    if variant not in VARIANTS:
        raise InputError(f"unknown variant '{variant}'; choose from {list(VARIANTS)}")
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'; choose from {list(METHODS)}")
    if not traits:
        raise InputError("no candidate traits")
    started = time.perf_counter()
    tokenizer, lm = pretrained.tokenizer, pretrained.model
    prefixes, continuations = _encode_documents(tokenizer, documents, max_tokens, sources[0])
    if null is not None:
        more = _encode_documents(tokenizer, null, max_tokens, sources[1])
        prefixes, continuations = prefixes + more[0], continuations + more[1]
    probes_tokens = _encode_traits(tokenizer, traits, max_tokens)
    scored = max(max(map(len, continuations)), max(len(a) for _, a in probes_tokens))
    pad = pad_id(tokenizer)
    inputs, targets = pack(prefixes, continuations, scored, pad)
    probes = []
    for trait, (prompts, answer) in zip(traits, probes_tokens):
        probe_inputs, probe_targets = pack(prompts, [answer] * len(prompts), scored, pad)
        probes.append(TraitProbe(trait.name, probe_inputs, _answer_loss(probe_targets)))

    lm.eval()
    model = FunctionalModel(CompletionLogits(lm, scored))
    theta = model.flat_params().detach()
    scale: Tensor | None = None  # sgd: P = I
    if variant == "sign":
        g = data_gradient(model, theta, inputs, targets, completion_nll, batch_size)
        scale = preconditioner("sign", g)
    elif variant == "rms":
        rms = minibatch_gradient_rms(
            model, theta, inputs, targets, completion_nll, student_batch, rms_draws, seed
        )
        scale = preconditioner("rms", rms, rms)
    if method == "factored":  # the probes' gradients stay factored where they factor
        factors = probe_factors(model, theta, probes)
        pushes = probe_trait_scores(
            model, theta, inputs, targets, completion_nll, factors, scale, batch_size
        )
    else:
        pushes = torch.empty(inputs.shape[0], len(traits), dtype=torch.float64)
        for k, probe in enumerate(probes):  # one trait at a time: one gradient in memory
            direction = trait_gradients(model, theta, [probe])
            if scale is not None:
                direction *= scale
            pushes[:, k] = example_attributions(
                model, theta, inputs, targets, completion_nll, direction, batch_size
            )[:, 0]
    n = len(documents)
    data_pushes, null_pushes = pushes[:n], (pushes[n:] if null is not None else None)
    rows, dataset = trait_statistics(
        data_pushes,
        null_pushes,
        [t.name for t in traits],
        bootstrap=bootstrap,
        permutations=permutations,
        seed=seed,
    )
    setup = {
        "model": pretrained.name,
        "sha256": pretrained.sha256,
        "dtype": str(theta.dtype).removeprefix("torch."),
        "parameters": model.num_params,
        "variant": variant,
        "method": method,
        "preconditioner_on": "data and null pooled" if null is not None else "data",
        "documents": n,
        "null_documents": 0 if null is None else len(null),
        "scored_tokens": int((targets != IGNORED).sum()),
        "bootstrap": bootstrap,
        "seed": seed,
        "seconds": time.perf_counter() - started,
    }
    lines = [d.line for d in documents] + [d.line for d in (null or [])]
    return ScreenDataResult(list(traits), data_pushes, null_pushes, rows, dataset, setup, lines)


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
_PRECONDITIONERS = {
    "sgd": "P = I, a plain gradient step",
    "sign": "P = 1/(|g_D| + eps), Adam's first step",
    "rms": "P = 1/(rms of minibatch gradients + eps), Adam's later steps",
}


def _interval(row: dict, prefix: str = "") -> str:
    mean, low, high = (row[f"{prefix}{k}"] for k in ("mean_push", "low", "high"))
    return f"{mean:+.3g} [{low:+.3g}, {high:+.3g}]"


def format_table(result: ScreenDataResult) -> str:
    """``table.md``: the ranked traits, what each column means, the data-set verdict."""
    s, null = result.setup, result.null is not None
    lines = [
        f"# Trait screen: {s['documents']} documents, {len(result.traits)} candidate traits",
        "",
        f"Model {s['model']} (sha256 {s['sha256'][:12]}, {s['dtype']}, {s['parameters']:,} "
        f"parameters); variant {s['variant']} ({_PRECONDITIONERS[s['variant']]}, computed on "
        f"the {s['preconditioner_on']}); {s['scored_tokens']} scored completion tokens; "
        f"pushes by the {s['method']} method.",
        "",
        "Push of document i toward trait k: c_ik = <P grad log P(answer_k | questions_k), "
        "-grad l_i>, exact, the rise of log P(answer) per unit learning rate of one step on "
        "document i (l_i: the loss on its completion tokens). Mean push: mean over documents, "
        "95% bootstrap interval; z = mean / SE; z_c = z minus its mean over the candidates; "
        "top share: the share of bootstrap resamples in which the trait has the largest mean "
        "push.",
        "",
    ]
    if null:
        lines += [
            f"Null: {s['null_documents']} documents. Welch t: data minus null pushes; t_c: t "
            "centred over the candidates (the rank); p Welch: one-sided, data pushes more than "
            "the null, this trait alone; p max-t: the same adjusted for all candidates "
            f"({result.dataset['permutations']} permutations of data and null documents).",
            "",
            "| rank | trait | mean push [95%] | z_c | null mean push [95%] | null z_c | "
            "Welch t | t_c | p Welch | p max-t |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result.rows:
            lines.append(
                f"| {r['rank']} | {r['trait']} | {_interval(r)} | {r['z_centered']:.2f} | "
                f"{_interval(r, 'null_')} | {r['null_z_centered']:.2f} | {r['welch_t']:.2f} | "
                f"{r['t_centered']:.2f} | {r['p_welch']:.3g} | {r['p_max_t']:.3g} |"
            )
        d = result.dataset
        lines += [
            "",
            f"Data set: S = {d['statistic']} = {d['value']:.2f} ({d['trait']}); permutation "
            f"p = {d['p']:.3g}. Flagging the data when p < alpha has false-alarm rate alpha "
            "when the data are samples from the same distribution as the null.",
        ]
    else:
        lines += [
            "| rank | trait | mean push [95%] | z | z_c | top share |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in result.rows:
            lines.append(
                f"| {r['rank']} | {r['trait']} | {_interval(r)} | {r['z']:.2f} | "
                f"{r['z_centered']:.2f} | {r['top_frequency']:.2f} |"
            )
        lines += [
            "",
            "Ranked by z_c. No null was given, so no p-value: z_c has no stated false-alarm "
            "rate. Pass --null with your base's own completions of the same prompts.",
        ]
    return "\n".join(lines) + "\n"


def write_outputs(result: ScreenDataResult, out: str | Path) -> list[Path]:
    """Write ``ranked.csv``, ``attributions.csv``, ``table.md`` and ``summary.json`` atomically.

    Returns:
        The paths written.

    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(result.rows[0])
    atomic_write_csv(out / "ranked.csv", result.rows, columns)
    names = [t.name for t in result.traits]
    sets = [("data", result.data)] + ([("null", result.null)] if result.null is not None else [])
    rows, index = [], 0
    for label, pushes in sets:
        for i in range(pushes.shape[0]):
            cells = {name: repr(float(v)) for name, v in zip(names, pushes[i].tolist())}
            rows.append({"set": label, "line": result.lines[index]} | cells)
            index += 1
    atomic_write_csv(out / "attributions.csv", rows, ["set", "line", *names])
    atomic_write_text(out / "table.md", format_table(result))
    summary = {"setup": result.setup, "dataset": result.dataset}
    summary["traits"] = [t.__dict__ for t in result.traits]
    atomic_write_json(out / "summary.json", summary)
    return [out / n for n in ("ranked.csv", "attributions.csv", "table.md", "summary.json")]
