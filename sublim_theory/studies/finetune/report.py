"""The finetune study's reports: the table, the CSVs and the figure, read only from the rows.

Every CSV is written with a fixed column order (``COLUMNS``), so a resumed run writes the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.records import interval_text, mean_interval
from sublim_theory.harness.runs import atomic_save_figure, atomic_write_text
from sublim_theory.studies.numbers.report import write_csv

__all__ = ["COLUMNS", "format_table", "plot", "rank_shape", "write_reports"]

_KEY = ("seed", "cell", "optimizer", "parameterization", "role")
COLUMNS = {
    "results.csv": (*_KEY, "metric", "value"),
    "steps.csv": (*_KEY, "step", "trait_cos", "loss"),
    # the order selection.json's sorted keys gave every run that read it back
    "lr_grid.csv": ("cell", "final_loss", "heldout_loss", "lr", "seed"),
}


def write_reports(out: Path, rows: list, steps: list, lrs: dict, grid: list) -> str:
    """Write the CSVs, the table and the figure; return the table."""
    write_csv(out / "results.csv", rows, COLUMNS["results.csv"])
    write_csv(out / "steps.csv", steps, COLUMNS["steps.csv"])
    write_csv(out / "lr_grid.csv", grid, COLUMNS["lr_grid.csv"])
    table = format_table(rows, lrs, grid)
    atomic_write_text(out / "table.md", table + "\n")
    plot(rows, steps, out / "finetune.png")
    return table


def _interval(values: list[float], digits: int = 3) -> str:
    mean, half, n = mean_interval(values)
    return "" if n == 0 else interval_text(mean, half, digits)


def _values(rows: list[dict]) -> dict[tuple[str, str, str], list[float]]:
    """``{(cell, role, metric): [value per seed, in seed order]}``."""
    table: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["seed"]):
        table[(r["cell"], r["role"], r["metric"])].append(float(r["value"]))
    return table


def _cells(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["cell"] for r in rows if r["cell"] != "-"))


def format_table(rows: list[dict], lrs: dict[str, float], grid: list[dict]) -> str:
    """The markdown report: per cell paired diff, seeds > 0, per-step cosines; the lr grid."""
    v = _values(rows)
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"seeds: {seeds} (mean [95% t-interval] over seeds; n = number of seeds)",
        "",
        f"base P(trait) {_interval(v[('-', 'base', 'p_trait')])}, "
        f"teacher P(trait) {_interval(v[('-', 'teacher', 'p_trait')])}",
        "",
        "| cell | lr | student P(trait) | control P(trait) | paired diff | n | seeds diff > 0 | "
        "mean per-step cos, student | mean per-step cos, control | held-out loss, student |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in _cells(rows):
        diff = v[(cell, "paired", "diff_p_trait")]
        lines.append(
            f"| {cell} | {lrs.get(cell, float('nan')):g} | "
            f"{_interval(v[(cell, 'student', 'p_trait')])} | "
            f"{_interval(v[(cell, 'control', 'p_trait')])} | {_interval(diff)} | {len(diff)} | "
            f"{sum(d > 0 for d in diff)}/{len(diff)} | "
            f"{_interval(v[(cell, 'student', 'mean_trait_cos')], 4)} | "
            f"{_interval(v[(cell, 'control', 'mean_trait_cos')], 4)} | "
            f"{_interval(v[(cell, 'student', 'heldout_loss')])} |"
        )
    lines += [
        "",
        "Per-step cos(grad L_trait, grad L_distill), mean over the steps of each third of training:",
        "",
        "| cell | role | early third | mid third | late third | fraction of steps > 0 |",
        "|---|---|---|---|---|---|",
    ]
    for cell in _cells(rows):
        for role in ("student", "control"):
            lines.append(
                f"| {cell} | {role} | "
                + " | ".join(
                    _interval(v[(cell, role, f"trait_cos_{part}")], 4)
                    for part in ("early", "mid", "late")
                )
                + f" | {_interval(v[(cell, role, 'frac_positive_trait_cos')])} |"
            )
    lines += _contrasts(rows)
    lines += _shape_lines(rows)
    if grid:
        lines += [
            "",
            f"Learning-rate grid (seed {grid[0]['seed']}, student on teacher numbers, held-out "
            "distillation loss; * = chosen):",
            "",
            "| cell | lr | held-out loss | final train loss |",
            "|---|---|---|---|",
        ]
        for g in grid:
            mark = " *" if lrs.get(g["cell"]) == g["lr"] else ""
            lines.append(
                f"| {g['cell']} | {g['lr']:g}{mark} | {g['heldout_loss']:.4f} | "
                f"{g['final_loss']:.4f} |"
            )
    return "\n".join(lines)


def _contrasts(rows: list[dict]) -> list[str]:
    """Differences of paired diffs between cells, paired by seed (the seed's teacher is shared)."""
    per_seed: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["role"] == "paired" and r["metric"] == "diff_p_trait":
            per_seed[r["cell"]][r["seed"]] = float(r["value"])
    pairs = []
    names = _cells(rows)
    optimizers = list(dict.fromkeys(c.split("/")[0] for c in names))
    params = list(dict.fromkeys(c.split("/")[1] for c in names))
    for optimizer in optimizers:
        for param in params[1:]:
            pairs.append((f"{optimizer}/{params[0]}", f"{optimizer}/{param}"))
        lora = [q for q in params if q != "full"]
        # neighbouring ranks: an inverted U in rank rises, then falls
        pairs += [(f"{optimizer}/{hi}", f"{optimizer}/{lo}") for lo, hi in zip(lora, lora[1:])]
    for param in params:
        for optimizer in optimizers[1:]:
            pairs.append((f"{optimizers[0]}/{param}", f"{optimizer}/{param}"))
    lines = [
        "",
        "Contrasts: paired diff of cell a minus paired diff of cell b, per seed (same teacher):",
        "",
        "| a | b | a - b | n | seeds a > b |",
        "|---|---|---|---|---|",
    ]
    for a, b in pairs:
        if a not in per_seed or b not in per_seed:
            continue
        seeds = sorted(set(per_seed[a]) & set(per_seed[b]))
        gaps = [per_seed[a][s] - per_seed[b][s] for s in seeds]
        wins = sum(g > 0 for g in gaps)
        lines.append(f"| {a} | {b} | {_interval(gaps)} | {len(gaps)} | {wins}/{len(gaps)} |")
    return lines


def _gap(per_seed: dict[int, dict[int, float]], a: int, b: list[int]) -> dict:
    """Per seed ``d(a) - mean_k d(b_k)``: its mean, 95% t half-width, n and seeds above 0."""
    seeds = sorted(set(per_seed[a]).intersection(*(per_seed[k] for k in b)))
    gaps = [per_seed[a][s] - sum(per_seed[k][s] for k in b) / len(b) for s in seeds]
    mean, half, n = mean_interval(gaps)
    return {"mean": mean, "half": half, "n": n, "above": sum(g > 0 for g in gaps)}


def _above_zero(gap: dict | None) -> bool:
    return gap is not None and not math.isnan(gap["half"]) and gap["mean"] - gap["half"] > 0


def rank_shape(per_seed: dict[int, dict[int, float]]) -> dict:
    """The inverted-U test over LoRA ranks, stated before the rank runs (issue 21 item 3).

    With ``d_s(r)`` the paired diff of seed s at rank r (``per_seed[r][s]``), ranks sorted:

    * peak ``r*`` = argmax_r mean_s d_s(r);
    * rise ``d(r*) - d(r_min)``; top below the peak ``F = d(r*) - d(r_max)``;
    * concavity around the peak ``C = d(r*) - (d(r-) + d(r+)) / 2`` with r-, r+ the neighbouring
      ranks (only for an interior peak);

    each per seed, then mean and 95% t-interval over the seeds common to its ranks. An inverted U
    is declared iff r* is interior AND C's interval AND F's interval lie above 0.

    Args:
        per_seed: ``{rank: {seed: paired diff}}``, at least 3 ranks.

    Returns:
        ``{"peak", "rise", "concavity", "fall", "inverted_u", "verdict"}``; the contrasts as
        ``{"mean", "half", "n", "above"}`` (``above`` = seeds with the contrast > 0);
        ``concavity`` None for a peak at an end, ``rise`` None for a peak at the smallest rank,
        ``fall`` None for a peak at the largest.

    Raises:
        InputError: fewer than 3 ranks.

    """
    ranks = sorted(per_seed)
    if len(ranks) < 3:
        raise InputError(f"the inverted-U test needs >= 3 LoRA ranks, got {ranks}")
    means = {r: mean_interval(per_seed[r].values())[0] for r in ranks}
    peak = max(ranks, key=lambda r: means[r])
    i = ranks.index(peak)
    interior = 0 < i < len(ranks) - 1
    concavity = _gap(per_seed, peak, [ranks[i - 1], ranks[i + 1]]) if interior else None
    fall = _gap(per_seed, peak, [ranks[-1]]) if peak != ranks[-1] else None
    top = f"r <= {ranks[-1]}"
    if not interior:
        end = "top" if peak == ranks[-1] else "bottom"
        verdict = f"no inverted U within {top}: the mean peaks at the {end} rank r = {peak}"
    elif _above_zero(concavity) and _above_zero(fall):
        verdict = f"inverted U within {top}: peak r = {peak}, C and F intervals above 0"
    else:
        failed = [name for name, g in (("C", concavity), ("F", fall)) if not _above_zero(g)]
        verdict = (
            f"no inverted U detected within {top}: peak r = {peak}, "
            f"{' and '.join(failed)} interval{'s' if len(failed) > 1 else ''} not above 0"
        )
    return {
        "peak": peak,
        "rise": _gap(per_seed, peak, [ranks[0]]) if peak != ranks[0] else None,
        "concavity": concavity,
        "fall": fall,
        "inverted_u": verdict.startswith("inverted U"),
        "verdict": verdict,
    }


def _shape_lines(rows: list[dict]) -> list[str]:
    """The inverted-U test (``rank_shape``) per optimizer with >= 3 LoRA ranks."""
    by_optimizer: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["role"] == "paired" and r["metric"] == "diff_p_trait":
            param = r["parameterization"]
            if param.startswith("r"):
                by_optimizer[r["optimizer"]][int(param[1:])][r["seed"]] = float(r["value"])
    tests = {o: rank_shape(p) for o, p in by_optimizer.items() if len(p) >= 3}
    if not tests:
        return []

    def show(gap: dict | None) -> str:
        if gap is None:
            return "-"
        return f"{interval_text(gap['mean'], gap['half'])} ({gap['above']}/{gap['n']} > 0)"

    lines = [
        "",
        "Inverted-U test over the LoRA ranks (peak r* = largest mean paired diff; rise d(r*) - "
        "d(r_min); C = d(r*) - mean of its neighbouring ranks; F = d(r*) - d(r_max); a U iff r* "
        "is interior and C and F have intervals above 0):",
        "",
        "| optimizer | peak r* | rise | C (concavity) | F (top below peak) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for optimizer, t in tests.items():
        lines.append(
            f"| {optimizer} | r{t['peak']} | {show(t['rise'])} | {show(t['concavity'])} | "
            f"{show(t['fall'])} | {t['verdict']} |"
        )
    return lines


def plot(rows: list[dict], steps: list[dict], path: Path) -> None:
    """Paired diff vs LoRA rank per optimizer (full FT apart), per-step cosines, cos per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = _values(rows)
    cells = _cells(rows)
    optimizers = list(dict.fromkeys(c.split("/")[0] for c in cells))
    ranks = sorted({int(c.split("/r")[1]) for c in cells if "/r" in c})
    positions = {f"r{r}": i for i, r in enumerate(ranks)}
    positions["full"] = len(ranks) + 0.6
    colors = dict(zip(optimizers, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))

    def per_cell(ax, role: str, metric: str, shift: float, marker: str, label_suffix: str):
        for k, optimizer in enumerate(optimizers):
            xs, means, errs = [], [], []
            for cell in cells:
                opt, param = cell.split("/")
                values = v[(cell, role, metric)]
                if opt != optimizer or not values:
                    continue
                mean, half, _ = mean_interval(values)
                x = positions[param] + (k - 1) * 0.12 + shift
                xs.append(x)
                means.append(mean)
                errs.append(0 if math.isnan(half) else half)
                ax.scatter([x] * len(values), values, color=colors[optimizer], s=7, alpha=0.5)
            lora = [i for i, x in enumerate(xs) if x < len(ranks) + 0.3]
            ax.plot([xs[i] for i in lora], [means[i] for i in lora], color=colors[optimizer])
            ax.errorbar(
                xs,
                means,
                yerr=errs,
                fmt=marker,
                color=colors[optimizer],
                capsize=3,
                label=optimizer + label_suffix,
            )
        ticks = [f"LoRA r={r}" for r in ranks] + ["full FT"]
        ax.set_xticks([positions[f"r{r}"] for r in ranks] + [positions["full"]], ticks)
        ax.axvline(len(ranks) + 0.1, color="gray", lw=0.5, ls=":")
        ax.axhline(0, color="k", lw=0.5)

    ax = axes[0]
    per_cell(ax, "paired", "diff_p_trait", 0.0, "o", "")
    ax.set_title("P(trait): student minus paired control")
    ax.legend(fontsize=8)

    ax = axes[1]
    series: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in steps:
        series[(s["cell"], s["role"])][int(s["step"])].append(float(s["trait_cos"]))
    window = 10  # one batch's gradient is noisy: a centered running mean over 10 steps
    for (cell, role), by_step in sorted(series.items()):
        if cell != "adam/full" and role == "control":
            continue
        xs = sorted(by_step)
        means = torch.tensor([sum(by_step[x]) / len(by_step[x]) for x in xs], dtype=torch.float64)
        if len(xs) >= window:
            means = means.unfold(0, window, 1).mean(1)
            xs = [x + (window - 1) / 2 for x in xs[: len(means)]]
        if cell == "adam/full":
            color = "k" if role == "student" else "gray"
            ax.plot(xs, means, color=color, lw=1.8, zorder=3, label=f"adam/full {role}")
        else:
            ax.plot(xs, means, color=colors[cell.split("/")[0]], lw=0.6, alpha=0.6)
    for optimizer in optimizers:
        ax.plot([], [], color=colors[optimizer], lw=0.6, label=f"{optimizer} students")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("step")
    ax.set_title(
        "per-step cos(grad L_trait, grad L_distill), mean over seeds,\n"
        f"running mean over {window} steps (thin: the other cells' students)",
        fontsize=9,
    )
    ax.legend(fontsize=7)

    ax = axes[2]
    per_cell(ax, "student", "mean_trait_cos", -0.03, "o", " student")
    per_cell(ax, "control", "mean_trait_cos", 0.03, "x", " control")
    ax.set_title("mean per-step cos over training")
    ax.legend(fontsize=7, ncol=2)
    n = len({r["seed"] for r in rows})
    fig.suptitle(f"Tiny-LM students across optimizers and LoRA ranks ({n} seeds; mean, 95% CI)")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
