"""The screening study's reports: every table and the figure, read only from the tidy rows."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from sublim_theory.harness.records import interval_text, mean_interval
from sublim_theory.harness.runs import atomic_save_figure, atomic_write_text

__all__ = [
    "COLUMNS",
    "build_tables",
    "format_rankings",
    "plot",
    "write_reports",
]


# The column order of rows.csv: the sorted keys every resumed run has written (and the
# committed results hold), now fixed for a first run too.
COLUMNS = {
    "rows.csv": ("dataset", "init", "metric", "seed", "teacher", "trait", "value", "variant"),
}


# --------------------------------------------------------------------------------------------
# reports: every table and the figure read only the tidy rows
# --------------------------------------------------------------------------------------------
def _index(rows: list[dict]) -> dict[tuple, float]:
    return {
        (r["seed"], r["dataset"], r["init"], r["variant"], r["trait"], r["metric"]): r["value"]
        for r in rows
    }


def _units(rows: list[dict]) -> list[tuple[int, str, str]]:
    """(seed, dataset, teacher) of every stored data set, in order."""
    seen = {}
    for r in rows:
        seen.setdefault((r["seed"], r["dataset"]), r["teacher"])
    return [(s, d, t) for (s, d), t in seen.items()]


def _ranks(index: dict, seed: int, dataset: str, init: str, variant: str, animals, metric: str):
    values = [index.get((seed, dataset, init, variant, a, metric), math.nan) for a in animals]
    if any(math.isnan(v) for v in values):
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


def build_tables(rows: list[dict], animals: list[str], settings: dict) -> tuple[str, list[dict]]:
    """The markdown report and the per-(data set, trait) ranking rows."""
    index = _index(rows)
    units = _units(rows)
    teachers = [(s, d, t) for s, d, t in units if t != "none"]
    nulls = [(s, d) for s, d, t in units if t == "none"]
    variants = [v for v in ("sgd", "sign", "rms") if any(r["variant"] == v for r in rows)]
    threshold = settings["z_threshold"]
    lines = [
        f"data sets: {len(teachers)} teacher ({sorted({t for *_, t in teachers})} x seeds "
        f"{sorted({s for s, *_ in teachers})}), {len(nulls)} base (null); "
        f"{len(animals)} candidate animals (chance top-1 {1 / len(animals):.2f}, "
        f"top-3 {min(3, len(animals)) / len(animals):.2f})",
        "",
        "### Detection: does the forecast name the teacher's animal? (screened against the base)",
        "",
        "| variant | ranked by | top-1 | top-3 | teacher rank (each data set) | flagged (max z_c > "
        f"{threshold:g}) |",
        "|---|---|---|---|---|---|",
    ]
    ranking_rows = []
    for variant in variants:
        for metric in ("forecast", "z_centered"):
            ranks, flags = [], 0
            for s, d, t in teachers:
                r = _ranks(index, s, d, "base", variant, animals, metric)
                if r is None:
                    continue
                ranks.append(r[t])
                zc = [index[(s, d, "base", variant, a, "z_centered")] for a in animals]
                flags += max(zc) > threshold
            if not ranks:
                continue
            top1 = sum(r == 1 for r in ranks)
            top3 = sum(r <= 3 for r in ranks)
            flagged = f"{flags}/{len(ranks)}" if metric == "z_centered" else ""
            lines.append(
                f"| {variant} | {metric} | {top1}/{len(ranks)} = {top1 / len(ranks):.2f} | "
                f"{top3}/{len(ranks)} = {top3 / len(ranks):.2f} | {ranks} | {flagged} |"
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

    # the null: the base's own numbers
    lines += [
        "",
        "### Null: the base's own numbers screened against the base (false alarms)",
        "",
        "| variant | data set | max_k z_c | argmax | all z_c |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        maxima = []
        for s, d in nulls:
            zc = [index.get((s, d, "base", variant, a, "z_centered"), math.nan) for a in animals]
            if any(math.isnan(z) for z in zc):
                continue
            k = int(np.argmax(zc))
            maxima.append(zc[k])
            if d != "base":  # the extra null draws are summarized below, not listed
                continue
            values = " ".join(f"{z:+.1f}" for z in zc)
            lines.append(
                f"| {variant} | seed {s}, base numbers | {zc[k]:.2f} | {animals[k]} | {values} |"
            )
        if maxima:
            alarms = sum(m > threshold for m in maxima)
            lines.append(
                f"| {variant} | all {len(maxima)} null data sets: false alarms {alarms}/"
                f"{len(maxima)} | median {np.median(maxima):.2f}, max {max(maxima):.2f} | | |"
            )
        teacher_z = [
            max(index[(s, d, "base", variant, a, "z_centered")] for a in animals)
            for s, d, _ in teachers
            if (s, d, "base", variant, animals[0], "z_centered") in index
        ]
        if teacher_z:
            lines.append(
                f"| {variant} | teacher data (min .. max over {len(teacher_z)}) | "
                f"{min(teacher_z):.2f} .. {max(teacher_z):.2f} | | |"
            )
    cross = []
    for s, d, t in teachers:
        r = _ranks(index, s, d, "cross", "sgd", animals, "forecast")
        if r is not None:
            zc = max(index[(s, d, "cross", "sgd", a, "z_centered")] for a in animals)
            cross.append((r[t], zc))
    if cross:
        lines += [
            "",
            "Shared-init assumption: the same teacher numbers screened against a base of "
            f"another init (sgd): teacher rank {[c[0] for c in cross]}, max z_c "
            f"{' '.join(f'{c[1]:.1f}' for c in cross)} (flagged {sum(c[1] > threshold for c in cross)}"
            f"/{len(cross)}).",
        ]

    # one step: forecast against a real step
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

    # many steps: forecast (x student steps) against the trained student
    lines += [
        "",
        "### Forecast after the student's steps against the trained student (Adam minibatches)",
        "",
        "Measured: Delta log P(animal) of the student trained on the data set minus that of the "
        "control student (base numbers, same seed). Forecast: first order, step x steps.",
        "",
        "| variant | r, all animals | slope | r, teacher's animal: forecast vs Delta P | n |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        xs, ys, xt, yt = [], [], [], []
        for s, d, t in teachers:
            control = [k for k in nulls if k[0] == s and k[1] == "base"]
            for a in animals:
                f = index.get((s, d, "base", variant, a, "forecast"))
                m = index.get((s, d, "base", "measured", a, "dlogp"))
                if f is None or m is None or not control:
                    continue
                c = index.get((s, control[0][1], "base", "measured", a, "dlogp"))
                if c is None:
                    continue
                xs.append(f)
                ys.append(m - c)
                if a == t:
                    p = index[(s, d, "base", "measured", a, "p")]
                    pc = index[(s, control[0][1], "base", "measured", a, "p")]
                    xt.append(f)
                    yt.append(p - pc)
        lines.append(
            f"| {variant} | {_pearson(xs, ys):.3f} | {_slope(xs, ys):.3f} | "
            f"{_pearson(xt, yt):.3f} | {len(xs)} ({len(xt)}) |"
        )

    # the filter
    fractions = settings["drop_fractions"]
    flagged_of = {
        (r["seed"], r["dataset"]): r["trait"] for r in rows if r["metric"] == "flagged_is_teacher"
    }
    lines += [
        "",
        f"### Filtering: drop the top q of documents by attribution ({settings['filter_variant']}) "
        "toward the flagged trait, or a random q, then train the student",
        "",
        "Delta log P(teacher's animal) of the student vs the base (mean [95% t-interval] over "
        "teacher data sets); full data: "
        + _fmt(
            *mean_interval(
                index.get((s, d, "base", "measured", t, "dlogp"), math.nan) for s, d, t in teachers
            )[:2]
        ),
        "",
        "| q | drop top q | drop random q | top - random | drop top q toward the runner-up "
        "trait | share of the attribution in the top q | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in fractions:
        top = [index.get((s, d, "base", "filter", t, f"dlogp_top_{q:g}")) for s, d, t in teachers]
        rnd = [
            index.get((s, d, "base", "filter", t, f"dlogp_random_{q:g}")) for s, d, t in teachers
        ]
        pairs = [(a, b) for a, b in zip(top, rnd) if a is not None and b is not None]
        runner = [
            index.get((s, d, "base", "filter", t, f"dlogp_runner_up_{q:g}")) for s, d, t in teachers
        ]
        shares = [
            index[(s, d, "base", "filter", flagged_of[(s, d)], f"concentration_{q:g}")]
            for s, d, _ in teachers
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
        index[(s, d, "base", "filter", f, "flagged_is_teacher")] for (s, d), f in flagged_of.items()
    ]
    if hits:
        lines.append(
            f"\nThe filter's flagged trait was the teacher's animal in {int(sum(hits))}/{len(hits)} "
            "data sets."
        )

    # cost
    lines += [
        "",
        "### Cost: screening time / one training epoch's forward+backward on the same documents",
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
                    }
                )
    return "\n".join(lines), ranking_rows


def format_rankings(ranking_rows: list[dict], variant: str = "sgd", top: int = 3) -> str:
    """The ranked table: per data set the strongest forecasts with their 95% intervals."""
    lines = [
        f"| seed | data set | top {top} by forecast ({variant}), Delta log P after the student's "
        "steps [95% bootstrap] | z_c of #1 | teacher's rank |",
        "|---|---|---|---|---|",
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
        lines.append(f"| {seed} | {dataset} | {cells} | {group[0]['z_centered']:.1f} | {rank} |")
    return "\n".join(lines)


def plot(rows: list[dict], animals: list[str], settings: dict, path: Path) -> None:
    """Three panels: forecast vs measured, the null vs the teachers' z_c, the filter curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = _index(rows)
    units = _units(rows)
    teachers = [(s, d, t) for s, d, t in units if t != "none"]
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
    full = [index.get((s, d, "base", "measured", t, "dlogp")) for s, d, t in teachers]
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
