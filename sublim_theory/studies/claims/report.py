"""The claims studies' tables and CSVs, rebuilt from the stored rows only.

Every table opens with its scope: the claim's own setting (as the source states it) and ours
(the tiny LM of ``numbers``, its parameter count printed). Intervals: paired differences over
seeds with the two-sided 95% Student-t interval (``harness.records.mean_interval``); Spearman's
rho with the Fisher-z interval of Bonett & Wright (2000), se = sqrt((1 + rho^2 / 2) / (n - 3));
AUROC with DeLong's interval (``testbeds.real_lm.statistics.auroc_interval``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sublim_theory.errors import InputError
from sublim_theory.harness.records import interval_text, mean_interval
from sublim_theory.harness.runs import atomic_write_text
from sublim_theory.studies.numbers.report import write_csv
from sublim_theory.testbeds.real_lm.statistics import auroc_interval

__all__ = [
    "ADAM_COLUMNS",
    "COVERAGE_COLUMNS",
    "adam_state_report",
    "coverage_report",
    "spearman_interval",
]

_Z95 = 1.959963984540054
ADAM_COLUMNS = ("seed", "arm", "k", "log_p", "p", "max_shift")
COVERAGE_COLUMNS = (
    "seed",
    "animal",
    "teacher_steps",
    "channel",
    "teacher_gain",
    "coverage",
    "forecast",
    "forecast_teacher",
    "forecast_control",
    "student_change",
    "control_change",
    "transfer",
)
XU = "Xu, arXiv 2608.20442"
MADL = "Madl, arXiv 2606.22019"


def spearman_interval(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, int]:
    """Spearman's rho of (x, y) over the pairs where both are finite, with a 95% interval.

    rho is Pearson's correlation of the average ranks; the interval is tanh(atanh(rho) -/+
    1.96 se) with Bonett & Wright's se = sqrt((1 + rho^2 / 2) / (n - 3)).

    Returns:
        (rho, low, high, n); NaN where n < 4 or a variable is constant (no ranks to correlate).

    """
    from scipy.stats import rankdata

    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n < 4:
        return math.nan, math.nan, math.nan, n
    rx, ry = (rankdata(np.array(v, dtype=float)) for v in zip(*pairs))
    if rx.std() == 0 or ry.std() == 0:
        return math.nan, math.nan, math.nan, n
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if abs(rho) >= 1:
        return rho, rho, rho, n  # atanh is infinite; the ranks agree (or disagree) exactly
    se = math.sqrt((1 + rho**2 / 2) / (n - 3))
    z = math.atanh(rho)
    return rho, math.tanh(z - _Z95 * se), math.tanh(z + _Z95 * se), n


def _paired(rows: list[dict], arm: str, k: int, key: str) -> list[float]:
    by = {(r["seed"], r["arm"], r["k"]): r[key] for r in rows}
    return [
        by[s, arm, k] - by[s, "neither", k]
        for s in sorted({r["seed"] for r in rows})
        if (s, arm, k) in by and (s, "neither", k) in by
    ]


def _difference_text(values: list[float], digits: int = 3) -> str:
    """A mean with its t-interval, or ``0 (identical)`` where every difference is exactly 0."""
    if values and all(v == 0 for v in values):
        return "0 (identical parameters)"
    return interval_text(*mean_interval(values)[:2], digits=digits)


def adam_state_report(out: Path, rows: list[dict], scope: str) -> str:
    """``results.csv`` and ``table.md`` of the Adam-state study; returns the table."""
    write_csv(out / "results.csv", rows, ADAM_COLUMNS)
    seeds = sorted({r["seed"] for r in rows})
    checkpoints = sorted({r["k"] for r in rows if r["arm"] == "neither"})
    lines = [
        f"# Adam-state transplant ({XU})",
        "",
        scope,
        "",
        f"Seeds: {len(seeds)}. Paired differences vs the `neither` arm (same seed, same batches), "
        "mean [95% t-interval over seeds]; trait = log P(trait | BOS Q) in nats.",
        "",
    ]
    gain = [
        r["log_p"] - b["log_p"]
        for r in rows
        if r["arm"] == "teacher"
        for b in rows
        if b["arm"] == "base" and b["seed"] == r["seed"]
    ]
    lines.append(
        f"Teacher - base (the trait to be moved): {interval_text(*mean_interval(gain)[:2])}"
    )
    lines += [
        "",
        "| k (source-free steps) | arm | Delta log P(trait) vs neither | Delta P(trait) vs neither "
        "| neither - base, log P | max abs(theta - theta_B) |",
        "|---|---|---|---|---|---|",
    ]
    base = {r["seed"]: r["log_p"] for r in rows if r["arm"] == "base"}
    for k in checkpoints:
        drift = [
            r["log_p"] - base[r["seed"]] for r in rows if r["arm"] == "neither" and r["k"] == k
        ]
        for arm in ("first", "second", "both"):
            shift = [r["max_shift"] for r in rows if r["arm"] == arm and r["k"] == k]
            lines.append(
                f"| {k} | {arm} | {_difference_text(_paired(rows, arm, k, 'log_p'))} "
                f"| {_difference_text(_paired(rows, arm, k, 'p'), digits=5)} "
                f"| {_difference_text(drift)} | {max(shift, default=math.nan):.3g} |"
            )
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "table.md", text)
    return text


def _auroc(values: list[float], labels: list[int]) -> tuple[tuple[float, ...], str]:
    """(AUROC, low, high) and its text; NaN and ``n/a`` with fewer than 2 in a class."""
    try:
        auc = auroc_interval(values, labels)
    except InputError:
        return (math.nan,) * 3, "n/a (< 2 in a class)"
    return (auc.auroc, auc.low, auc.high), f"{auc.auroc:.3f} [{auc.low:.3f}, {auc.high:.3f}]"


def coverage_report(out: Path, rows: list[dict], scope: str, threshold: float) -> str:
    """``results.csv``, ``summary.csv`` and ``table.md`` of the coverage study."""
    write_csv(out / "results.csv", rows, COVERAGE_COLUMNS)
    summary = []
    lines = [
        f"# Coverage vs the first-order forecast ({MADL})",
        "",
        scope,
        "",
        f"A teacher = (seed, animal, teacher steps). Transfer = the trained student's change of "
        f"log P(animal | BOS Q) minus its paired control's (base numbers). 'Transfers' = "
        f"transfer > {threshold:g} nats; a second AUROC splits the channel's teachers at its "
        "median transfer (balanced classes). Spearman: Fisher-z interval (Bonett-Wright); AUROC: "
        "DeLong interval.",
        "",
        "| channel | statistic | teachers | transfer, mean [t-interval] | transfers (yes/no) "
        "| Spearman rho [95%] | AUROC, transfer > threshold [95%] "
        "| AUROC, transfer > channel median [95%] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for channel in ("full", "masked"):
        mine = [r for r in rows if r["channel"] == channel]
        if not mine:
            continue
        transfer = [float(r["transfer"]) for r in mine]
        median = float(np.median(transfer))
        labels = [int(t > threshold) for t in transfer]
        above = [int(t > median) for t in transfer]
        for statistic in ("coverage", "forecast"):
            values = [float(r[statistic]) for r in mine]
            rho, low, high, n = spearman_interval(values, transfer)
            auc, auc_text = _auroc(values, labels)
            split, split_text = _auroc(values, above)
            rho_text = "n/a" if math.isnan(rho) else f"{rho:.3f} [{low:.3f}, {high:.3f}]"
            lines.append(
                f"| {channel} | {statistic} | {n} | {interval_text(*mean_interval(transfer)[:2])} "
                f"| {sum(labels)}/{len(labels) - sum(labels)} | {rho_text} | {auc_text} "
                f"| {split_text} |"
            )
            summary.append(
                {
                    "channel": channel,
                    "statistic": statistic,
                    "n": n,
                    "positives": sum(labels),
                    "spearman": rho,
                    "spearman_low": low,
                    "spearman_high": high,
                    "auroc": auc[0],
                    "auroc_low": auc[1],
                    "auroc_high": auc[2],
                    "median_transfer": median,
                    "auroc_median": split[0],
                    "auroc_median_low": split[1],
                    "auroc_median_high": split[2],
                }
            )
    write_csv(out / "summary.csv", summary, list(summary[0]) if summary else None)
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "table.md", text)
    return text
