"""The screening study's reports: every table and the figure, read only from the tidy rows.

Statistics (all from the stored rows):

* a data set's statistic S(D) = max_k z_c,k (``z_centered``) or max_k forecast_k, per variant;
* its empirical p-value against the null data sets N (the base's own numbers, and the extra
  null draws): p(D) = (1 + #{N in null : S(N) >= S(D)}) / (1 + |null|); a null data set gets
  its leave-one-out p (the others as its null), so the share of null data sets flagged at
  p <= alpha is the measured false-alarm rate (nominal at most alpha);
* per trait (placebo check): the z_c of one candidate against every candidate's z_c in every
  null data set, p_k = (1 + #{null z_c >= z_c,k}) / (1 + #null values);
* detection AUROC of S, teacher vs null data sets, with DeLong's 95% interval
  (``testbeds.real_lm.statistics.auroc_interval``); the confound-only baselines the same way;
* proportions with Wilson 95% intervals; correlations with Fisher-z 95% intervals
  (Pearson: se 1/sqrt(n-3); Spearman: Bonett and Wright's se sqrt((1 + rho^2/2)/(n-3))).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from sublim_theory.harness.records import interval_text, mean_interval
from sublim_theory.harness.runs import atomic_save_figure, atomic_write_text

__all__ = [
    "COLUMNS",
    "CONFOUNDS",
    "build_tables",
    "correlation",
    "empirical_p",
    "format_rankings",
    "plot",
    "proportion",
    "write_reports",
]


# The column order of rows.csv: the sorted keys every resumed run has written (and the
# committed results hold), now fixed for a first run too.
COLUMNS = {
    "rows.csv": ("dataset", "init", "metric", "seed", "teacher", "trait", "value", "variant"),
}
# confound-only baselines: name -> what it is (``loss_gap`` is formed here from mean_base_loss)
CONFOUNDS = {
    "mean_chars": "mean length (characters of the numbers as text)",
    "mean_base_loss": "mean loss under the base",
    "mean_grad_norm": "mean per-example gradient norm",
    "loss_gap": "loss gap (mean base loss minus the base's own numbers', same seed)",
}
_Z95 = 1.959963984540054


def empirical_p(observed: float, null: list[float]) -> float:
    """(1 + #{null >= observed}) / (1 + len(null)): the permutation-style p-value (NaN if no null)."""
    if not null or math.isnan(observed):
        return math.nan
    return (1 + sum(v >= observed for v in null)) / (1 + len(null))


def proportion(hits: int, total: int) -> str:
    """``"k/n = share [Wilson 95%]"``; ``"0/0"`` when there is nothing to count."""
    from sublim_theory.testbeds.real_lm.statistics import wilson_interval

    if total == 0:
        return "0/0"
    low, high = wilson_interval(int(hits), int(total))
    return f"{int(hits)}/{total} = {hits / total:.2f} [{low:.2f}, {high:.2f}]"


def _rankdata(values: list[float]) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values)


def correlation(
    x: list[float], y: list[float], kind: str = "pearson"
) -> tuple[float, float, float]:
    """(r, low, high): Pearson or Spearman r with a Fisher-z 95% interval (NaN for n < 4).

    Pearson: tanh(atanh r -/+ z / sqrt(n - 3)); Spearman: the Pearson r of the ranks with
    Bonett and Wright's se sqrt((1 + r^2 / 2) / (n - 3)).
    """
    n = len(x)
    if n < 4 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan, math.nan, math.nan
    if kind == "spearman":
        x, y = list(_rankdata(x)), list(_rankdata(y))
    r = float(np.corrcoef(x, y)[0, 1])
    se = math.sqrt((1 + r * r / 2) / (n - 3)) if kind == "spearman" else 1 / math.sqrt(n - 3)
    centre = math.atanh(max(-1 + 1e-15, min(1 - 1e-15, r)))
    return r, math.tanh(centre - _Z95 * se), math.tanh(centre + _Z95 * se)


def _corr_text(x: list[float], y: list[float], kind: str) -> str:
    r, low, high = correlation(x, y, kind)
    return "n/a" if math.isnan(r) else f"{r:.2f} [{low:.2f}, {high:.2f}]"


def _auroc(positive: list[float], negative: list[float]):
    """AUROC of positive vs negative scores with a 95% interval, or None (< 2 of either class).

    Returns:
        The ``AurocResult`` of ``testbeds.real_lm.statistics.auroc_interval`` (DeLong's
        interval; Wilson's under complete separation), or None.

    """
    from sublim_theory.testbeds.real_lm.statistics import auroc_interval

    pos = [v for v in positive if not math.isnan(v)]
    neg = [v for v in negative if not math.isnan(v)]
    if len(pos) < 2 or len(neg) < 2:
        return None
    return auroc_interval(pos + neg, [1] * len(pos) + [0] * len(neg))


def _auroc_text(result) -> str:
    return "n/a" if result is None else f"{result.auroc:.2f} [{result.low:.2f}, {result.high:.2f}]"


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    return float(psi.mean())


def _gain_interval(
    trait: tuple[list[float], list[float]],
    confound: tuple[list[float], list[float]],
    sign: float,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUROC(trait) - AUROC(sign * confound) with a paired bootstrap 95% interval.

    Teacher and null data sets are resampled separately (with replacement), the same indices
    for both statistics.
    """
    tp, tn = np.asarray(trait[0]), np.asarray(trait[1])
    cp, cn = sign * np.asarray(confound[0]), sign * np.asarray(confound[1])
    gain = _auc(tp, tn) - _auc(cp, cn)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(0, tp.size, tp.size)
        j = rng.integers(0, tn.size, tn.size)
        draws.append(_auc(tp[i], tn[j]) - _auc(cp[i], cn[j]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return gain, float(low), float(high)


# --------------------------------------------------------------------------------------------
# reports: every table and the figure read only the tidy rows
# --------------------------------------------------------------------------------------------
def _index(rows: list[dict]) -> dict[tuple, float]:
    return {
        (r["seed"], r["dataset"], r["init"], r["variant"], r["trait"], r["metric"]): r["value"]
        for r in rows
    }


def _order(dataset: str, teacher: str, animals: list[str]) -> tuple:
    """A stable sort key: base, nulls by draw, format, teachers in the order of ``animals``."""
    if dataset == "base":
        return (0, 0)
    if dataset.startswith("null-"):
        return (1, int(dataset.split("-", 1)[1]))
    if teacher == "control":
        return (2, 0)
    return (3, animals.index(teacher) if teacher in animals else len(animals))


def _units(rows: list[dict], animals: list[str]) -> list[tuple[int, str, str]]:
    """(seed, dataset, teacher) of every stored data set, in a stable order (seed, kind, animal)."""
    seen = {}
    for r in rows:
        seen.setdefault((r["seed"], r["dataset"]), r["teacher"])
    return sorted(
        ((s, d, t) for (s, d), t in seen.items()), key=lambda u: (u[0], _order(u[1], u[2], animals))
    )


def _values(index: dict, s: int, d: str, init: str, variant: str, animals, metric: str):
    values = [index.get((s, d, init, variant, a, metric), math.nan) for a in animals]
    return None if any(math.isnan(v) for v in values) else values


def _ranks(index: dict, seed: int, dataset: str, init: str, variant: str, animals, metric: str):
    values = _values(index, seed, dataset, init, variant, animals, metric)
    if values is None:
        return None
    order = sorted(range(len(animals)), key=lambda k: -values[k])
    return {animals[k]: r + 1 for r, k in enumerate(order)}


def _pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of y on x through the origin (forecast 0 -> change 0)."""
    xs, ys = np.asarray(x), np.asarray(y)
    denominator = float(xs @ xs)
    return float(xs @ ys) / denominator if denominator > 0 else math.nan


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(mean) else interval_text(mean, half, digits)


def _statistic(index: dict, s: int, d: str, variant: str, animals, metric: str) -> float:
    """S(D): the largest ``metric`` (z_centered or forecast) over the candidates, or NaN."""
    values = _values(index, s, d, "base", variant, animals, metric)
    return math.nan if values is None else max(values)


def _confound(index: dict, s: int, d: str, name: str) -> float:
    if name == "loss_gap":
        own = index.get((s, d, "base", "confound", "", "mean_base_loss"), math.nan)
        reference = index.get((s, "base", "base", "confound", "", "mean_base_loss"), math.nan)
        return own - reference
    return index.get((s, d, "base", "confound", "", name), math.nan)


def _short(s: int, t: str) -> str:
    return f"s{s} {t}"


def build_tables(rows: list[dict], animals: list[str], settings: dict) -> tuple[str, list[dict]]:
    """The markdown report and the per-(data set, trait) ranking rows."""
    index = _index(rows)
    units = _units(rows, animals)
    teachers = [(s, d, t) for s, d, t in units if t not in ("none", "control")]
    nulls = [(s, d) for s, d, t in units if t == "none"]
    formats = [(s, d) for s, d, t in units if t == "control"]
    hidden = {t for *_, t in teachers if t not in settings["teachers"]}
    variants = [v for v in ("sgd", "sign", "rms") if any(r["variant"] == v for r in rows)]
    alpha = settings.get("alpha", 0.05)
    lines = [
        f"data sets: {len(teachers)} teacher ({sorted({t for *_, t in teachers})} x seeds "
        f"{sorted({s for s, *_ in teachers})}; hidden-style teachers {sorted(hidden)}), "
        f"{len(nulls)} null (the base's own numbers: {sum(d == 'base' for _, d in nulls)} on the "
        f"teachers' prompts, {sum(d != 'base' for _, d in nulls)} extra draws), "
        f"{len(formats)} format controls; {len(animals)} candidate animals (chance top-1 "
        f"{1 / len(animals):.2f}, top-3 {min(3, len(animals)) / len(animals):.2f}). "
        "Proportions: k/n = share [Wilson 95%]; AUROC [DeLong 95%]; p-values empirical against "
        "the null data sets (1 + #null >= observed) / (1 + #null), leave-one-out for a null "
        f"data set; flagged: p <= {alpha:g}.",
    ]

    # ---- confound-only baselines (their AUROC, oriented the better way: favours them)
    confound_auc = {}
    for name in CONFOUNDS:
        pos = [_confound(index, s, d, name) for s, d, _ in teachers]
        neg = [_confound(index, s, d, name) for s, d in nulls]
        if any(math.isnan(v) for v in pos + neg):
            continue
        result = _auroc(pos, neg)
        if result is None:
            continue
        sign = 1.0 if result.auroc >= 0.5 else -1.0
        if sign < 0:
            result = _auroc([-v for v in pos], [-v for v in neg])
        confound_auc[name] = (result, sign, pos, neg)
    best = max(confound_auc, key=lambda k: confound_auc[k][0].auroc) if confound_auc else None

    # ---- detection, calibration, AUROC, gain over the best confound
    lines += [
        "",
        "### Detection: does the screen name the teacher's animal, and flag the data set?",
        "",
        "S(D) = the largest ranking value over the candidates (max_k z_c or max_k forecast). "
        f"Best confound-only baseline: {best or 'n/a'}"
        + (f" (AUROC {_auroc_text(confound_auc[best][0])})" if best else "")
        + "; gain = AUROC(S) - AUROC(best confound) [paired bootstrap 95%].",
        "",
        "| variant | ranked by | top-1 | top-3 | AUROC of S, teacher vs null | flagged: teacher "
        "data sets | false alarms: null data sets (leave-one-out) | gain over the best "
        "confound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    p_values: dict[tuple, float] = {}
    for variant in variants:
        for metric in ("forecast", "z_centered"):
            ranks = []
            for s, d, t in teachers:
                r = _ranks(index, s, d, "base", variant, animals, metric)
                if r is not None:
                    ranks.append(r[t])
            if not ranks:
                continue
            pos = [_statistic(index, s, d, variant, animals, metric) for s, d, _ in teachers]
            neg = [_statistic(index, s, d, variant, animals, metric) for s, d in nulls]
            pos = [v for v in pos if not math.isnan(v)]
            neg_ok = [v for v in neg if not math.isnan(v)]
            for s, d, _ in teachers:
                observed = _statistic(index, s, d, variant, animals, metric)
                p_values[(s, d, variant, metric)] = empirical_p(observed, neg_ok)
            for s, d in formats:
                observed = _statistic(index, s, d, variant, animals, metric)
                p_values[(s, d, variant, metric)] = empirical_p(observed, neg_ok)
            for i, (s, d) in enumerate(nulls):
                others = [v for j, v in enumerate(neg) if j != i and not math.isnan(v)]
                p_values[(s, d, variant, metric)] = empirical_p(neg[i], others)
            flagged = [
                p_values[(s, d, variant, metric)] <= alpha
                for s, d, _ in teachers
                if not math.isnan(p_values[(s, d, variant, metric)])
            ]
            alarms = [
                p_values[(s, d, variant, metric)] <= alpha
                for s, d in nulls
                if not math.isnan(p_values[(s, d, variant, metric)])
            ]
            top1 = sum(r == 1 for r in ranks)
            top3 = sum(r <= 3 for r in ranks)
            gain = "n/a"
            if best is not None and len(pos) == len(teachers) and len(neg_ok) == len(nulls):
                _, sign, cpos, cneg = confound_auc[best]
                g, low, high = _gain_interval((pos, neg_ok), (cpos, cneg), sign)
                gain = f"{g:+.2f} [{low:+.2f}, {high:+.2f}]"
            lines.append(
                f"| {variant} | {metric} | {proportion(top1, len(ranks))} | "
                f"{proportion(top3, len(ranks))} | {_auroc_text(_auroc(pos, neg_ok))} | "
                f"{proportion(sum(flagged), len(flagged))} | "
                f"{proportion(sum(alarms), len(alarms))} | {gain} |"
            )

    # ---- the confound-only baselines, each
    lines += [
        "",
        "### Confound-only baselines (know no trait): AUROC teacher vs null data sets",
        "",
        "Each oriented the way that separates better (this favours the baselines); "
        "'higher/lower' says which way teachers lie.",
        "",
        "| baseline | AUROC, teacher vs null | teacher data sets higher or lower | "
        "teacher mean | null mean | format controls' mean |",
        "|---|---|---|---|---|---|",
    ]
    for name, (result, sign, pos, neg) in confound_auc.items():
        fvals = [_confound(index, s, d, name) for s, d in formats]
        lines.append(
            f"| {CONFOUNDS[name]} | {_auroc_text(result)} | {'higher' if sign > 0 else 'lower'} "
            f"| {np.mean(pos):.4g} | {np.mean(neg):.4g} | "
            f"{np.mean(fvals) if fvals else math.nan:.4g} |"
        )
    if not confound_auc:
        lines.append(
            "| (no confound rows stored, or fewer than 2 data sets of a class) | | | | | |"
        )

    # ---- per data set: teacher's rank and p-values, with names, in a stable order
    keys = [(v, m) for v in variants for m in ("forecast", "z_centered")]
    lines += [
        "",
        "### Per data set: the teacher's rank and the data set's p-value",
        "",
        "| seed | data set | kind | "
        + " | ".join(f"rank ({v}, {m})" for v, m in keys)
        + " | "
        + " | ".join(f"p ({v}, z_c)" for v in variants)
        + " |",
        "|---|---|---|" + "---|" * (len(keys) + len(variants)),
    ]
    kinds = [(s, d, t, "hidden teacher" if t in hidden else "teacher") for s, d, t in teachers]
    kinds += [(s, d, "none", "null") for s, d in nulls]
    kinds += [(s, d, "control", "format control") for s, d in formats]
    kinds.sort(key=lambda u: (u[0], _order(u[1], u[2], animals)))
    for s, d, t, kind in kinds:
        cells = []
        for v, m in keys:
            r = _ranks(index, s, d, "base", v, animals, m)
            cells.append("" if r is None or t not in r else str(r[t]))
        ps = [p_values.get((s, d, v, "z_centered"), math.nan) for v in variants]
        lines.append(
            f"| {s} | {d} | {kind} | "
            + " | ".join(cells)
            + " | "
            + " | ".join("n/a" if math.isnan(p) else f"{p:.3f}" for p in ps)
            + " |"
        )

    # ---- placebo traits: the non-teacher animals' z_c in teacher data against the null
    lines += [
        "",
        "### Placebo traits: per-trait p-values in teacher data sets (z_c of one candidate "
        "against every candidate's z_c in every null data set)",
        "",
        "| variant | teacher's animal: p <= alpha | placebo (every other animal): p <= alpha |",
        "|---|---|---|",
    ]
    for variant in variants:
        pool = [
            z
            for s, d in nulls
            for z in (_values(index, s, d, "base", variant, animals, "z_centered") or [])
        ]
        own, placebo = [], []
        for s, d, t in teachers:
            zc = _values(index, s, d, "base", variant, animals, "z_centered")
            if zc is None or not pool:
                continue
            for a, z in zip(animals, zc):
                (own if a == t else placebo).append(empirical_p(z, pool) <= alpha)
        lines.append(
            f"| {variant} | {proportion(sum(own), len(own))} | "
            f"{proportion(sum(placebo), len(placebo))} |"
        )

    accuracy = [
        index[(s, d, "base", "data", "", "classifier_accuracy")]
        for s, d, _ in teachers
        if (s, d, "base", "data", "", "classifier_accuracy") in index
    ]
    if accuracy:
        lines += [
            "",
            "Baseline: bag-of-numbers classifier, teacher vs base numbers (held-out accuracy, "
            f"chance 0.5; it cannot name an animal): {_fmt(*mean_interval(accuracy)[:2])} "
            f"over {len(accuracy)} data sets.",
        ]

    # ---- the null: the base's own numbers
    lines += [
        "",
        "### Null: the base's own numbers screened against the base",
        "",
        "z_c listed in the order of the candidates " + ", ".join(animals) + ".",
        "",
        "| variant | data set | max_k z_c | argmax | all z_c |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        maxima = []
        for s, d in nulls:
            zc = _values(index, s, d, "base", variant, animals, "z_centered")
            if zc is None:
                continue
            k = int(np.argmax(zc))
            maxima.append(zc[k])
            if d != "base":  # the extra null draws are summarized below, not listed
                continue
            values = " ".join(f"{animals[j]} {z:+.1f}" for j, z in enumerate(zc))
            lines.append(
                f"| {variant} | seed {s}, base numbers | {zc[k]:.2f} | {animals[k]} | {values} |"
            )
        if maxima:
            lines.append(
                f"| {variant} | all {len(maxima)} null data sets | median {np.median(maxima):.2f}"
                f", max {max(maxima):.2f} | | |"
            )
        teacher_z = [
            _statistic(index, s, d, variant, animals, "z_centered") for s, d, _ in teachers
        ]
        teacher_z = [z for z in teacher_z if not math.isnan(z)]
        if teacher_z:
            lines.append(
                f"| {variant} | teacher data (min .. max over {len(teacher_z)}) | "
                f"{min(teacher_z):.2f} .. {max(teacher_z):.2f} | | |"
            )
        for s, d in formats:
            zc = _values(index, s, d, "base", variant, animals, "z_centered")
            if zc is not None:
                k = int(np.argmax(zc))
                p = p_values.get((s, d, variant, "z_centered"), math.nan)
                lines.append(
                    f"| {variant} | seed {s}, format control (p = {p:.3f}) | {zc[k]:.2f} | "
                    f"{animals[k]} | "
                    + " ".join(f"{animals[j]} {z:+.1f}" for j, z in enumerate(zc))
                    + " |"
                )
    cross = []
    for s, d, t in teachers:
        r = _ranks(index, s, d, "cross", "sgd", animals, "forecast")
        if r is not None:
            zc = max(index[(s, d, "cross", "sgd", a, "z_centered")] for a in animals)
            cross.append((s, t, r[t], zc))
    if cross:
        threshold = settings["z_threshold"]
        lines += [
            "",
            "Shared-init assumption: the same teacher numbers screened against a base of "
            "another init (sgd): teacher's rank, max z_c: "
            + ", ".join(f"{_short(s, t)} {r} ({z:.1f})" for s, t, r, z in cross)
            + f"; max z_c > {threshold:g} in "
            + proportion(sum(c[3] > threshold for c in cross), len(cross))
            + ".",
        ]

    # ---- one step: forecast against a real step
    lines += [
        "",
        "### One real step against its forecast (all data sets x animals, Delta log P)",
        "",
        "| step | slope measured/forecast | Pearson r | n |",
        "|---|---|---|---|",
    ]
    steps = sorted({r["variant"] for r in rows if r["variant"].startswith(("sgd_step_", "adam"))})
    for step in steps:
        xs, ys = [], []
        for s, d, _ in units:
            for a in animals:
                f = index.get((s, d, "base", step, a, "forecast"))
                m = index.get((s, d, "base", step, a, "measured"))
                if f is not None and m is not None:
                    xs.append(f)
                    ys.append(m)
        name = step.replace("sgd_step_", "SGD, lr ").replace("adam_step", "Adam, first step")
        lines.append(f"| {name} | {_slope(xs, ys):.3f} | {_pearson(xs, ys):.3f} | {len(xs)} |")

    # ---- many steps: forecast (x student steps) against the trained student
    lines += [
        "",
        "### Forecast against the trained student (Adam minibatches, every teacher data set)",
        "",
        "Measured: Delta log P(animal) of the student trained on the data set minus that of the "
        "control student (base numbers, same seed). Forecast: first order, lr x steps x the "
        "mean attribution. Teacher's animal: one point per teacher data set; r [95% Fisher z].",
        "",
        "| variant | teachers | Pearson r, teacher's animal | Spearman rho, teacher's animal | "
        "n | Pearson r, all animals | slope, all animals | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        for group, members in (
            ("all", teachers),
            ("hidden-style", [u for u in teachers if u[2] in hidden]),
        ):
            if group == "hidden-style" and not hidden:
                continue
            xs, ys, xt, yt = [], [], [], []
            for s, d, t in members:
                for a in animals:
                    f = index.get((s, d, "base", variant, a, "forecast"))
                    m = index.get((s, d, "base", "measured", a, "dlogp"))
                    c = index.get((s, "base", "base", "measured", a, "dlogp"))
                    if f is None or m is None or c is None:
                        continue
                    xs.append(f)
                    ys.append(m - c)
                    if a == t:
                        xt.append(f)
                        yt.append(m - c)
            lines.append(
                f"| {variant} | {group} | {_corr_text(xt, yt, 'pearson')} | "
                f"{_corr_text(xt, yt, 'spearman')} | {len(xt)} | {_pearson(xs, ys):.3f} | "
                f"{_slope(xs, ys):.3f} | {len(xs)} |"
            )

    # ---- the filter
    fractions = settings["drop_fractions"]
    flagged_of = {
        (r["seed"], r["dataset"]): r["trait"] for r in rows if r["metric"] == "flagged_is_teacher"
    }
    filtered = [
        (s, d, t)
        for s, d, t in teachers
        if any((s, d, "base", "filter", t, f"dlogp_top_{q:g}") in index for q in fractions)
    ]
    title = (
        f"### Filtering: drop the top q of documents by attribution ({settings['filter_variant']}) "
        "toward the flagged trait, or a random q, then train the student"
    )
    if not filtered:
        lines += [
            "",
            title,
            "",
            "Not run: no filter unit is stored ([screen] filter_seeds "
            f"{list(settings.get('filter_seeds', []))}, seeds run "
            f"{sorted({s for s, *_ in units})}).",
        ]
    else:
        full = [index.get((s, d, "base", "measured", t, "dlogp"), math.nan) for s, d, t in filtered]
        lines += [
            "",
            title,
            "",
            "Delta log P(teacher's animal) of the student vs the base (mean [95% t-interval] over "
            f"the {len(filtered)} filtered teacher data sets); the same data sets, full data: "
            + _fmt(*mean_interval(full)[:2]),
            "",
            "| q | drop top q | drop random q | top - random | drop top q toward the runner-up "
            "trait | share of the attribution in the top q | n |",
            "|---|---|---|---|---|---|---|",
        ]
        for q in fractions:
            top = [
                index.get((s, d, "base", "filter", t, f"dlogp_top_{q:g}")) for s, d, t in filtered
            ]
            rnd = [
                index.get((s, d, "base", "filter", t, f"dlogp_random_{q:g}"))
                for s, d, t in filtered
            ]
            pairs = [(a, b) for a, b in zip(top, rnd) if a is not None and b is not None]
            runner = [
                index.get((s, d, "base", "filter", t, f"dlogp_runner_up_{q:g}"))
                for s, d, t in filtered
            ]
            shares = [
                index[(s, d, "base", "filter", flagged_of[(s, d)], f"concentration_{q:g}")]
                for s, d, _ in filtered
                if (s, d) in flagged_of
            ]
            if not pairs:
                continue
            lines.append(
                f"| {q:g} | {_fmt(*mean_interval(a for a, _ in pairs)[:2])} | "
                f"{_fmt(*mean_interval(b for _, b in pairs)[:2])} | "
                f"{_fmt(*mean_interval(a - b for a, b in pairs)[:2])} | "
                f"{_fmt(*mean_interval(v for v in runner if v is not None)[:2])} "
                f"(n={sum(v is not None for v in runner)}) | "
                f"{_fmt(*mean_interval(shares)[:2])} | {len(pairs)} |"
            )
        hits = [
            index[(s, d, "base", "filter", flagged_of[(s, d)], "flagged_is_teacher")]
            for s, d, _ in filtered
            if (s, d) in flagged_of
        ]
        if hits:
            lines.append(
                "\nThe filter's flagged trait was the teacher's animal in "
                f"{proportion(int(sum(hits)), len(hits))} data sets."
            )

    # ---- cost
    lines += [
        "",
        "### Cost: screening time / one training epoch's forward+backward on the same documents",
        "",
        f"Attributions by the {settings.get('method', 'jvp')} path; the sign and rms variants "
        "add the full-data gradient, rms its minibatch gradients.",
        "",
        "| variant | seconds per 1000 documents (all traits) | ratio to one epoch | n |",
        "|---|---|---|---|",
    ]
    for variant in variants:
        ratios, per_k = [], []
        for s, d, _ in teachers:
            sec = index.get((s, d, "base", variant, "", "seconds"))
            n = index.get((s, d, "base", variant, "", "n_screened"))
            epoch = index.get((s, d, "base", "cost", "", "epoch_seconds"))
            docs = index.get((s, d, "base", "data", "", "n_documents"))
            if None in (sec, n, epoch, docs):
                continue
            per_k.append(1000 * sec / n)
            ratios.append((sec / n) / (epoch / docs))
        if ratios:
            lines.append(
                f"| {variant} | {_fmt(*mean_interval(per_k)[:2], digits=2)} | "
                f"{_fmt(*mean_interval(ratios)[:2], digits=1)} | {len(ratios)} |"
            )

    ranking_rows = []
    for s, d, t in units:
        for variant in variants:
            r = _ranks(index, s, d, "base", variant, animals, "forecast")
            if r is None:
                continue
            for a in animals:
                ranking_rows.append(
                    {
                        "seed": s,
                        "dataset": d,
                        "teacher": t,
                        "variant": variant,
                        "trait": a,
                        "rank": r[a],
                        **{
                            m: index[(s, d, "base", variant, a, m)]
                            for m in ("forecast", "low", "high", "top_frequency", "z", "z_centered")
                        },
                        "p_value": p_values.get((s, d, variant, "z_centered"), math.nan),
                    }
                )
    return "\n".join(lines), ranking_rows


def format_rankings(ranking_rows: list[dict], variant: str = "sgd", top: int = 3) -> str:
    """The ranked table: per data set the strongest forecasts with their 95% intervals."""
    lines = [
        f"| seed | data set | top {top} by forecast ({variant}): forecast Delta log P, first "
        "order x the student's steps [95% bootstrap] | z_c of #1 | p (z_c) | teacher's rank |",
        "|---|---|---|---|---|---|",
    ]
    groups = defaultdict(list)
    for r in ranking_rows:
        if r["variant"] == variant:
            groups[(r["seed"], r["dataset"])].append(r)
    for (seed, dataset), group in groups.items():
        group.sort(key=lambda r: r["rank"])
        cells = ", ".join(
            f"{r['trait']} {r['forecast']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"
            for r in group[:top]
        )
        teacher = group[0]["teacher"]
        rank = next((r["rank"] for r in group if r["trait"] == teacher), "")
        p = group[0].get("p_value", math.nan)
        lines.append(
            f"| {seed} | {dataset} | {cells} | {group[0]['z_centered']:.1f} | "
            f"{'n/a' if math.isnan(p) else f'{p:.3f}'} | {rank} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], animals: list[str], settings: dict, path: Path) -> None:
    """Three panels: forecast vs measured, the null vs the teachers' z_c, the filter curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = _index(rows)
    units = _units(rows, animals)
    teachers = [(s, d, t) for s, d, t in units if t not in ("none", "control")]
    nulls = {s: d for s, d, t in units if t == "none" and d == "base"}
    every_null = [(s, d) for s, d, t in units if t == "none"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    for s, d, t in teachers:
        if s not in nulls:
            continue
        for a in animals:
            f = index.get((s, d, "base", "sgd", a, "forecast"))
            m = index.get((s, d, "base", "measured", a, "dlogp"))
            c = index.get((s, nulls[s], "base", "measured", a, "dlogp"))
            if None in (f, m, c):
                continue
            mine = a == t
            ax.scatter(
                f, m - c, s=30 if mine else 10, c="C3" if mine else "0.6", zorder=3 if mine else 2
            )
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.set_xlabel("forecast Delta log P (sgd, x student steps)")
    ax.set_ylabel("measured Delta log P, student - control")
    ax.set_title("forecast vs trained student (red: teacher's animal)")
    ax = axes[1]
    null_z = [
        index[(s, d, "base", "sgd", a, "z_centered")]
        for s, d in every_null
        for a in animals
        if (s, d, "base", "sgd", a, "z_centered") in index
    ]
    own = [
        index[(s, d, "base", "sgd", t, "z_centered")]
        for s, d, t in teachers
        if (s, d, "base", "sgd", t, "z_centered") in index
    ]
    other = [
        index[(s, d, "base", "sgd", a, "z_centered")]
        for s, d, t in teachers
        for a in animals
        if a != t and (s, d, "base", "sgd", a, "z_centered") in index
    ]
    for x, values, color, name in (
        (0, null_z, "0.4", "base numbers (null)"),
        (1, other, "0.7", "teacher data, other animals"),
        (2, own, "C3", "teacher data, teacher's animal"),
    ):
        jitter = np.linspace(-0.15, 0.15, max(1, len(values)))
        ax.scatter(x + jitter[: len(values)], values, s=12, c=color, label=name)
    ax.axhline(settings["z_threshold"], color="C0", ls="--", lw=1, label="threshold")
    ax.set_xticks([0, 1, 2], ["null", "other", "teacher's"])
    ax.set_ylabel("centred t statistic z_c (sgd)")
    ax.set_title("the null vs teacher data")
    ax.legend(fontsize=7)
    ax = axes[2]
    fractions = list(settings["drop_fractions"])
    for kind, color in (("top", "C3"), ("random", "0.5"), ("runner_up", "C0")):
        means, halves = [], []
        for q in fractions:
            values = [
                index.get((s, d, "base", "filter", t, f"dlogp_{kind}_{q:g}"))
                for s, d, t in teachers
            ]
            mean, half, _ = mean_interval(v for v in values if v is not None)
            means.append(mean)
            halves.append(half)
        if all(math.isnan(m) for m in means):
            continue
        ax.errorbar(
            fractions,
            means,
            yerr=halves,
            marker="o",
            color=color,
            label=f"drop {kind.replace('_', '-')} q"
            + (" (toward #2)" if kind == "runner_up" else ""),
            capsize=3,
        )
    full = [  # the filtered data sets' own full-data values
        index.get((s, d, "base", "measured", t, "dlogp"))
        for s, d, t in teachers
        if (s, d, "base", "filter", t, f"dlogp_top_{fractions[0]:g}") in index
    ]
    mean, half, _ = mean_interval(v for v in full if v is not None)
    ax.errorbar([0], [mean], yerr=[half], marker="s", color="k", label="all data", capsize=3)
    ax.set_xlabel("share q of documents dropped")
    ax.set_ylabel("Delta log P(teacher's animal), student vs base")
    ax.set_title("filtering by attribution")
    ax.legend(fontsize=7)
    figure.tight_layout()
    atomic_save_figure(figure, path, dpi=120)
    plt.close(figure)


def write_reports(out: Path, rows: list[dict], animals: list[str], settings: dict) -> str:
    """Write rows.csv, ranking.csv, table.md and screen.png; return the printed text."""
    from sublim_theory.studies.numbers.report import write_csv

    write_csv(out / "rows.csv", rows, COLUMNS["rows.csv"])
    text, ranking_rows = build_tables(rows, animals, settings)
    write_csv(out / "ranking.csv", ranking_rows)
    ranked = format_rankings(ranking_rows)
    report = ranked + "\n\n" + text + "\n"
    atomic_write_text(out / "table.md", report)
    plot(rows, animals, settings, out / "screen.png")
    return report
