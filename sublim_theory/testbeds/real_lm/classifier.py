"""A classifier telling the teacher's numbers from the base's (the paper's detection check).

The paper reports that prompted LLM classifiers could not detect the trait in the number data.
Here the detector is a plain L2-regularized logistic regression on number-frequency features of
each completion (:func:`number_features`):

- 1000 features: the share of the completion's numbers equal to each value 0..999;
- 10 features: the share of its digits equal to each digit 0..9;
- 3 features: count of numbers / 10, mean value / 999, share of numbers above 499.

Scored by K-fold cross-validation (seeded stratified folds; standardization fitted on the
training folds only), the out-of-fold scores give a held-out AUROC with DeLong's 95% interval
(:func:`sublim_theory.testbeds.real_lm.statistics.auroc_interval`). 0.5 means no detectable difference.

Paired data need grouped folds. When the teacher and the base answer the same prompts, the two
completions of one prompt share the prompt's numbers (the model continues the sequence it was
given). If one of them trains and the other is held out, the classifier has learned "these
numbers mean teacher" from a pair whose held-out twin is the base: the out-of-fold AUROC falls
far BELOW 0.5 with no difference between the sources (measured on the committed SmolLM2 data:
0.23-0.25 ungrouped). ``groups`` (the prompt of each completion) keeps both members of a pair in
one fold, so a held-out completion's prompt was never seen in training.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sublim_theory.errors import InputError
from sublim_theory.testbeds.real_lm.statistics import AurocResult, auroc_interval

__all__ = [
    "ClassifierResult",
    "cross_validated_auroc",
    "fit_logistic",
    "number_features",
]

_VALUES = 1000


def number_features(texts: Sequence[str]) -> np.ndarray:
    """The 1013 frequency features of each completion (module docstring).

    Returns:
        An array (len(texts), 1013); a completion without numbers is all zeros.

    """
    features = np.zeros((len(texts), _VALUES + 13))
    for row, text in enumerate(texts):
        numbers = [int(n) for n in re.findall(r"\d+", text) if int(n) < _VALUES]
        digits = [int(d) for d in re.findall(r"\d", text)]
        if numbers:
            np.add.at(features[row], numbers, 1.0 / len(numbers))
            values = np.asarray(numbers, dtype=float)
            features[row, _VALUES + 10] = len(numbers) / 10
            features[row, _VALUES + 11] = values.mean() / 999
            features[row, _VALUES + 12] = (values > 499).mean()
        if digits:
            np.add.at(features[row], [_VALUES + d for d in digits], 1.0 / len(digits))
    return features


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float) -> np.ndarray:
    """Weights (bias last) minimizing mean log-loss + (l2 / 2) ||w||^2 (bias unpenalized), L-BFGS.

    Returns:
        The (d + 1,) weights.

    """
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    weights = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def objective():
        optimizer.zero_grad()
        logits = x @ weights[:-1] + weights[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + 0.5 * l2 * weights[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return weights.detach().numpy()


@dataclass(frozen=True)
class ClassifierResult:
    """The held-out detector's score.

    Attributes:
        auroc: out-of-fold AUROC with DeLong's interval.
        accuracy: out-of-fold accuracy at score 0.5.
        scores: out-of-fold P(teacher) per completion, teacher texts first.
        labels: 1 for teacher, 0 for base.

    """

    auroc: AurocResult
    accuracy: float
    scores: np.ndarray
    labels: np.ndarray


def _fold_assignment(
    labels: np.ndarray, groups: Sequence[Hashable] | None, folds: int, seed: int
) -> np.ndarray:
    """The fold of each text: stratified by label, or by group when groups are given.

    Returns:
        An int array (len(labels),) of fold indices in 0..folds-1.

    Raises:
        InputError: ``groups`` of the wrong length, or fewer than ``folds`` groups.

    """
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=int)
    if groups is None:
        for label in (0, 1):
            members = np.flatnonzero(labels == label)
            fold_of[rng.permutation(members)] = np.arange(members.size) % folds
        return fold_of
    if len(groups) != len(labels):
        raise InputError(
            f"groups has {len(groups)} keys for {len(labels)} texts; give one per text"
        )
    keys = list(dict.fromkeys(groups))
    if len(keys) < folds:
        raise InputError(f"need at least {folds} groups for {folds} folds, got {len(keys)}")
    fold_of_key = dict(
        zip((keys[i] for i in rng.permutation(len(keys))), np.arange(len(keys)) % folds)
    )
    fold_of[:] = [fold_of_key[g] for g in groups]
    return fold_of


def cross_validated_auroc(
    teacher_texts: Sequence[str],
    base_texts: Sequence[str],
    *,
    folds: int = 5,
    l2: float = 1e-2,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> ClassifierResult:
    """Held-out AUROC of logistic regression telling teacher completions from base ones.

    Args:
        teacher_texts: completions by the teacher (label 1).
        base_texts: completions by the base (label 0).
        folds: K of the stratified K-fold split.
        l2: the L2 penalty (fixed in advance, not tuned on the data).
        seed: seed of the fold assignment.
        groups: one key per text (teacher texts first, then base texts), e.g. the prompt each
            answers; texts with one key always share a fold (module docstring). None: every
            text its own group, folds stratified by label.

    Returns:
        The :class:`ClassifierResult`.

    Raises:
        InputError: fewer than ``folds`` texts (or groups) of either kind, folds < 2, or a
            ``groups`` of the wrong length.

    """
    if folds < 2 or min(len(teacher_texts), len(base_texts)) < folds:
        raise InputError(
            f"need folds >= 2 and at least {folds} texts of each kind, got "
            f"{len(teacher_texts)} teacher and {len(base_texts)} base"
        )
    features = number_features(list(teacher_texts) + list(base_texts))
    labels = np.array([1] * len(teacher_texts) + [0] * len(base_texts))
    fold_of = _fold_assignment(labels, groups, folds, seed)
    scores = np.empty(len(labels))
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        centre = features[train].mean(0)
        scale = features[train].std(0)
        scale[scale == 0] = 1.0
        weights = fit_logistic((features[train] - centre) / scale, labels[train], l2)
        logits = (features[test] - centre) / scale @ weights[:-1] + weights[-1]
        scores[test] = 1 / (1 + np.exp(-logits))
    accuracy = float(((scores > 0.5) == labels).mean())
    return ClassifierResult(auroc_interval(scores, labels), accuracy, scores, labels)
