"""Intervals and tests the real-model experiment reports: proportions, two-sample t, AUROC.

- :func:`wilson_interval` and :func:`clopper_pearson_interval`: 95% intervals for a share k/n.
- :func:`newcombe_difference`: a 95% interval for the difference of two independent shares.
- :func:`welch_test`: Welch's unequal-variance t between two samples (the forecast's teacher vs
  base examples).
- :func:`auroc_interval`: the area under the ROC curve (the Mann-Whitney statistic) with DeLong's
  variance (DeLong, DeLong & Clarke-Pearson 1988), a normal 95% interval clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sublim_theory.errors import InputError

__all__ = [
    "AurocResult",
    "WelchResult",
    "auroc_interval",
    "clopper_pearson_interval",
    "newcombe_difference",
    "welch_test",
    "wilson_interval",
]

_Z95 = 1.959963984540054


def _check_counts(hits: int, total: int) -> None:
    if total < 1 or not 0 <= hits <= total:
        raise InputError(
            f"a proportion needs 0 <= hits <= total and total >= 1, got {hits}/{total}"
        )


def wilson_interval(hits: int, total: int) -> tuple[float, float]:
    """Wilson's score 95% interval for the share ``hits / total``.

    (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.95996.

    Returns:
        (low, high).

    Raises:
        InputError: not 0 <= hits <= total with total >= 1.

    """
    _check_counts(hits, total)
    p = hits / total
    z2 = _Z95**2
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = _Z95 * math.sqrt(p * (1 - p) / total + z2 / (4 * total**2)) / (1 + z2 / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_difference(
    hits_a: int, total_a: int, hits_b: int, total_b: int
) -> tuple[float, float, float]:
    """The difference of two independent shares with Newcombe's hybrid score 95% interval.

    With d = p_a - p_b and Wilson intervals (l_a, u_a), (l_b, u_b) of the two shares
    (Newcombe 1998, Statistics in Medicine 17:873, method 10):
    L = d - sqrt((p_a - l_a)^2 + (u_b - p_b)^2), U = d + sqrt((u_a - p_a)^2 + (p_b - l_b)^2).
    It has positive width whenever both totals are positive, even at 0/n vs 0/n.

    Returns:
        (difference, low, high).

    Raises:
        InputError: a share with not 0 <= hits <= total, total >= 1.

    """
    low_a, high_a = wilson_interval(hits_a, total_a)
    low_b, high_b = wilson_interval(hits_b, total_b)
    p_a, p_b = hits_a / total_a, hits_b / total_b
    d = p_a - p_b
    low = d - math.sqrt((p_a - low_a) ** 2 + (high_b - p_b) ** 2)
    high = d + math.sqrt((high_a - p_a) ** 2 + (p_b - low_b) ** 2)
    return d, low, high


def clopper_pearson_interval(hits: int, total: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95% interval: Beta quantiles at 2.5% and 97.5%.

    Returns:
        (low, high).

    Raises:
        InputError: not 0 <= hits <= total with total >= 1.

    """
    _check_counts(hits, total)
    from scipy.stats import beta

    low = 0.0 if hits == 0 else float(beta.ppf(0.025, hits, total - hits + 1))
    high = 1.0 if hits == total else float(beta.ppf(0.975, hits + 1, total - hits))
    return low, high


@dataclass(frozen=True)
class WelchResult:
    """Welch's t between samples a and b (a minus b).

    Attributes:
        mean_a: mean of a.
        mean_b: mean of b.
        difference: mean_a - mean_b.
        low: lower end of the 95% interval of the difference (Welch df).
        high: upper end.
        t: the t statistic.
        df: Welch-Satterthwaite degrees of freedom.
        p_value: two-sided.
        n_a: size of a.
        n_b: size of b.

    """

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    t: float
    df: float
    p_value: float
    n_a: int
    n_b: int


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's unequal-variance two-sample t of mean(a) - mean(b), with its 95% interval.

    t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b), df by Welch-Satterthwaite.

    Returns:
        The :class:`WelchResult`.

    Raises:
        InputError: a sample with fewer than 2 values, or a non-finite value.

    """
    from scipy.stats import t as student

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise InputError(f"Welch's t needs at least 2 values per sample, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("Welch's t got a non-finite value")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    difference = float(x.mean() - y.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        t = math.copysign(math.inf, difference) if difference else math.nan
        df = float(x.size + y.size - 2)
    else:
        t = difference / se
        df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    p = float(2 * student.sf(abs(t), df)) if math.isfinite(t) else (0.0 if difference else 1.0)
    half = float(student.ppf(0.975, df)) * se
    return WelchResult(
        float(x.mean()), float(y.mean()), difference, difference - half, difference + half,
        float(t), float(df), p, int(x.size), int(y.size),
    )  # fmt: skip


@dataclass(frozen=True)
class AurocResult:
    """AUROC of scores separating positives from negatives.

    Attributes:
        auroc: P(score of a positive > score of a negative) + 0.5 P(tie).
        low: lower end of DeLong's 95% interval (clipped to [0, 1]).
        high: upper end.
        n_positive: positives.
        n_negative: negatives.

    """

    auroc: float
    low: float
    high: float
    n_positive: int
    n_negative: int


def auroc_interval(scores: Sequence[float], labels: Sequence[int]) -> AurocResult:
    """AUROC with DeLong's variance: Var = S10/m + S01/n over the structural components.

    V10_i = mean_j psi(x_i, y_j) for positive i, V01_j = mean_i psi(x_i, y_j) for negative j,
    psi = 1 (x > y), 1/2 (tie), 0; S10, S01 their sample variances.

    DeLong's variance is 0 when every (positive, negative) comparison agrees (complete
    separation, AUROC 0 or 1, or all scores tied). There the interval is Wilson's for
    m = min(n_pos, n_neg) disjoint (positive, negative) pairs: each is an independent
    Bernoulli(AUROC) trial, and all m agree. So no interval has zero width.

    Returns:
        The :class:`AurocResult`.

    Raises:
        InputError: lengths differ, labels not 0/1, or fewer than 2 of either class.

    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise InputError(f"scores and labels must be 1-D of one length, got {s.shape}, {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise InputError("labels must be 0 or 1")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size < 2 or neg.size < 2:
        raise InputError(f"AUROC needs >= 2 of each class, got {pos.size} and {neg.size}")
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    se = math.sqrt(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size)
    if se > 0:
        low, high = max(0.0, auc - _Z95 * se), min(1.0, auc + _Z95 * se)
    else:
        m = min(pos.size, neg.size)
        low, high = wilson_interval(round(auc * m), m)
    return AurocResult(auc, low, high, int(pos.size), int(neg.size))
