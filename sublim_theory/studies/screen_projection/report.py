"""The projection study's reports: ``table.md``, ``summary.csv`` and ``rows.csv``, from the rows only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sublim_theory.harness.runs import atomic_write_csv, atomic_write_text
from sublim_theory.testbeds.real_lm.statistics import wilson_interval

__all__ = ["COLUMNS", "SUMMARY_COLUMNS", "build_tables", "summary", "write_reports"]

COLUMNS = ("seed", "dataset", "teacher", "dim", "projection_seed", "trait", "metric", "value")
SUMMARY_COLUMNS = (
    "dim",
    "n_teacher",
    "top1",
    "top1_low",
    "top1_high",
    "top3",
    "top3_low",
    "top3_high",
    "spearman_teacher_median",
    "spearman_teacher_min",
    "spearman_all_median",
    "spearman_null_median",
    "overlap_mean",
    "overlap_min",
    "overlap_max",
    "seconds_per_projection",
)


def _index(rows: list[dict]) -> dict[tuple, float]:
    return {
        (r["seed"], r["dataset"], r["dim"], r["projection_seed"], r["trait"], r["metric"]): float(
            r["value"]
        )
        for r in rows
    }


def _data_sets(rows: list[dict]) -> list[tuple[int, str, str]]:
    seen: dict[tuple, str] = {}
    for r in rows:
        seen.setdefault((r["seed"], r["dataset"]), r["teacher"])
    return [(s, d, t) for (s, d), t in seen.items()]


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def summary(rows: list[dict], animals: list[str], settings: dict) -> list[dict]:
    """One row per d (0 = exact): detection top-1/top-3 with Wilson 95% intervals, Spearman, overlap.

    Top-1/top-3 count the teacher data sets x projection seeds (the exact row: the data sets);
    the projections of one d share the data sets, so the count is not of independent draws of
    the data, only of the projection.

    Returns:
        The summary rows, one per d.

    """
    index = _index(rows)
    sets = _data_sets(rows)
    out = []
    for dim in [0, *settings["dims"]]:
        seeds = [-1] if dim == 0 else list(range(settings["projection_seeds"]))
        top1 = top3 = total = 0
        teacher_rho, all_rho, null_rho, overlap, seconds = [], [], [], [], []
        for seed, dataset, teacher in sets:
            for p in seeds:
                if (seed, dataset, dim, p, animals[0], "rank") not in index:
                    continue
                if dim:
                    rhos = [index[(seed, dataset, dim, p, a, "spearman")] for a in animals]
                    overlap += [
                        v
                        for (s, d, m, q, _, metric), v in index.items()
                        if (s, d, m, q, metric) == (seed, dataset, dim, p, "top_overlap")
                    ]
                    seconds.append(index[(seed, dataset, dim, p, "", "seconds")])
                if teacher == "none":
                    null_rho += rhos if dim else []
                    continue
                rank = index[(seed, dataset, dim, p, teacher, "rank")]
                total += 1
                top1 += rank <= 1
                top3 += rank <= 3
                if dim:
                    teacher_rho.append(index[(seed, dataset, dim, p, teacher, "spearman")])
                    all_rho += rhos
        if total == 0:
            continue
        low1, high1 = wilson_interval(top1, total)
        low3, high3 = wilson_interval(top3, total)
        out.append(
            {
                "dim": dim,
                "n_teacher": total,
                "top1": top1,
                "top1_low": low1,
                "top1_high": high1,
                "top3": top3,
                "top3_low": low3,
                "top3_high": high3,
                "spearman_teacher_median": _median(teacher_rho) if dim else 1.0,
                "spearman_teacher_min": min(teacher_rho) if teacher_rho else 1.0,
                "spearman_all_median": _median(all_rho) if dim else 1.0,
                "spearman_null_median": _median(null_rho) if dim else 1.0,
                "overlap_mean": float(np.mean(overlap)) if overlap else 1.0,
                "overlap_min": min(overlap) if overlap else 1.0,
                "overlap_max": max(overlap) if overlap else 1.0,
                "seconds_per_projection": _median(seconds) if seconds else 0.0,
            }
        )
    return out


def _share(hits: int, total: int, low: float, high: float) -> str:
    return f"{hits}/{total} [{low:.2f}, {high:.2f}]"


def build_tables(rows: list[dict], animals: list[str], settings: dict) -> str:
    """Every table of ``table.md``, as markdown text."""
    index = _index(rows)
    sets = _data_sets(rows)
    teachers = [s for s in sets if s[2] != "none"]
    q = settings["filter_fraction"]
    lines = [
        "# Exact vs projected attributions (tiny-LM screen, issue 22 item 4)",
        "",
        f"{len(teachers)} teacher data sets and {len(sets) - len(teachers)} null (base-number) "
        f"data sets; per data set the first {settings['screen_examples']} documents scored "
        f"against the base's {len(animals)} trait directions, exactly (d = exact) and through "
        f"{settings['projection_seeds']} {settings['kind']} projections per d. "
        "Forecast = mean attribution per animal (the sgd screen's, before its step-size "
        "factor); top-1/top-3 = the teacher's animal ranked first / in the first 3 of "
        f"{len(animals)}, counted over teacher data sets x projection seeds, Wilson 95% "
        "intervals. Spearman: per-document attributions, projected vs exact (teacher's "
        "animal; all animals; all animals on the null data sets). Filter overlap: share of the "
        f"top {q:g} of documents by attribution toward the exact forecast's first animal that "
        "the projected attributions also put in their top share.",
        "",
        "| d | top-1 | top-3 | Spearman, teacher's animal: median (min) | Spearman, all "
        f"animals: median | Spearman, null sets: median | filter overlap (top {q:g}): mean "
        "[min, max] | s per projection (P^T P v) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary(rows, animals, settings):
        d = "exact" if r["dim"] == 0 else str(r["dim"])
        lines.append(
            f"| {d} | {_share(r['top1'], r['n_teacher'], r['top1_low'], r['top1_high'])} | "
            f"{_share(r['top3'], r['n_teacher'], r['top3_low'], r['top3_high'])} | "
            f"{r['spearman_teacher_median']:.3f} ({r['spearman_teacher_min']:.3f}) | "
            f"{r['spearman_all_median']:.3f} | {r['spearman_null_median']:.3f} | "
            f"{r['overlap_mean']:.3f} [{r['overlap_min']:.3f}, {r['overlap_max']:.3f}] | "
            f"{r['seconds_per_projection']:.1f} |"
        )
    dims = settings["dims"]
    lines += [
        "",
        "Per teacher data set: the teacher animal's rank under the exact forecast and under "
        "each projection (one per projection seed), cos(mean_i g_i, v_teacher) (the exact "
        "data gradient against the teacher's trait direction: a forecast through a projection "
        "has noise ~ |g||v| / sqrt(d), so it resolves the signal only for d >> 1/cos^2), and "
        "the median Spearman of the teacher animal's per-document attributions.",
        "",
        "| seed | data set | cos | 1/cos^2 | exact rank | "
        + " | ".join(f"ranks d={d} | Spearman d={d}" for d in dims)
        + " |",
        "|---|---|---|---|---|" + "---|---|" * len(dims),
    ]
    for seed, dataset, teacher in teachers:
        if (seed, dataset, 0, -1, teacher, "rank") not in index:
            continue
        cos = index[(seed, dataset, 0, -1, teacher, "cos")]
        cells = [
            str(seed),
            dataset,
            f"{cos:+.2e}",
            f"{1 / cos**2:.3g}" if cos else "inf",
            f"{index[(seed, dataset, 0, -1, teacher, 'rank')]:.0f}",
        ]
        for d in dims:
            ranks, rhos = [], []
            for p in range(settings["projection_seeds"]):
                if (seed, dataset, d, p, teacher, "rank") in index:
                    ranks.append(f"{index[(seed, dataset, d, p, teacher, 'rank')]:.0f}")
                    rhos.append(index[(seed, dataset, d, p, teacher, "spearman")])
            cells += [",".join(ranks), f"{_median(rhos):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, rows: list[dict], animals: list[str], settings: dict) -> str:
    """Write ``rows.csv``, ``summary.csv`` and ``table.md`` under ``out``; return the tables."""
    text = build_tables(rows, animals, settings)
    atomic_write_csv(out / "rows.csv", rows, list(COLUMNS))
    atomic_write_csv(out / "summary.csv", summary(rows, animals, settings), list(SUMMARY_COLUMNS))
    atomic_write_text(out / "table.md", text)
    return text
