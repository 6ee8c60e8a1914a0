"""Figures of a sweep, drawn from its table only (``sweep.csv``; theory/alignment.md section 5).

compute -> tidy table -> plot: every figure here reads ``out_dir/sweep.csv`` and nothing else,
and the summaries it draws (``alignment_curves``, ``trajectory_curves``) are plain functions of
the table's rows, so tests assert on exactly what the figure shows.

Figures (PNG and PDF):
    alignment_vs_distance   cos(dtheta_S, v) against ||theta_S0 - theta_0|| / ||theta_0|| (log x),
                            every seed as a dot, mean and 95% CI over seeds as a line and band,
                            one colour per architecture; the first-order prediction
                            cos(K(eps v - Delta), v) (mean over seeds) dashed; the shared init is
                            drawn at the left edge, independent inits as isolated markers with
                            their seeds.
    collapse                the same against delta / eps, one line per eps, one panel per
                            architecture, the first-order prediction dotted: cos(K(eps v - delta d),
                            v) depends on (eps, delta) only through delta / eps, so the curves
                            collapse where the first order holds.
    trajectories            per-step cos(step_t, v) and cos(theta_S,t - theta_S0, v) for SGD and
                            Adam, shared init (solid) vs a different init (dashed).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sublim_theory.errors import InputError
from sublim_theory.harness.records import mean_interval
from sublim_theory.harness.runs import atomic_save_figure
from sublim_theory.studies.init_distance import TABLE_NAME, read_table

__all__ = [
    "CURVE_PLACEMENTS",
    "POINT_MARKERS",
    "POINT_PLACEMENTS",
    "Row",
    "alignment_curves",
    "architectures",
    "load_sweep",
    "one_step_rows",
    "plot_alignment_vs_distance",
    "plot_collapse",
    "plot_sweep",
    "plot_trajectories",
    "teacher_steps",
    "trajectory_curves",
]

Row = dict[str, Any]
# Placements drawn as curves (their scale moves the student continuously away from theta_0).
CURVE_PLACEMENTS = ("scaled_noise", "noise", "interpolate")
# Placements drawn as isolated points (no continuous scale).
POINT_PLACEMENTS = ("independent", "share_body", "share_head")
POINT_MARKERS = {"independent": "X", "share_body": "s", "share_head": "^"}


def load_sweep(out_dir: str | os.PathLike[str]) -> list[Row]:
    """The rows of ``out_dir/sweep.csv`` (the only input of every figure)."""
    rows = read_table(Path(out_dir) / TABLE_NAME)
    if not rows:
        raise InputError(f"the sweep table in '{out_dir}' has no rows yet; run the sweep first")
    return rows


def one_step_rows(rows: list[Row]) -> list[Row]:
    """The rows of the one-step measurement."""
    return [r for r in rows if r["measurement"] == "one_step"]


def teacher_steps(rows: list[Row]) -> list[float]:
    """The teacher steps eps of the one-step rows, ascending."""
    return sorted({r["eps"] for r in one_step_rows(rows)})


def architectures(rows: list[Row]) -> list[str]:
    """Architectures in table order."""
    return list(dict.fromkeys(r["arch"] for r in rows))


def _summarize(group: list[Row]) -> dict[str, float]:
    cos, cos_ci, n = mean_interval(r["cos_exact_teacher"] for r in group)
    return {
        "scale": group[0]["scale"],
        "distance_rel": mean_interval(r["init_distance_rel"] for r in group)[0],
        "distance_abs": mean_interval(r["init_distance_abs"] for r in group)[0],
        "delta_over_eps": mean_interval(r["delta_over_eps"] for r in group)[0],
        "cos": cos,
        "cos_ci": cos_ci,
        "first_order": mean_interval(r["cos_first_order_teacher"] for r in group)[0],
        "seeds_distance_rel": [r["init_distance_rel"] for r in group],
        "seeds_cos": [r["cos_exact_teacher"] for r in group],
        "n": n,
    }


def alignment_curves(rows: list[Row], placement: str, eps: float) -> dict[str, list[dict]]:
    """Per architecture, the seed-averaged one-step points of one placement kind at one eps.

    Each point: scale, distance_rel, distance_abs, delta_over_eps (means over seeds), cos and
    cos_ci (mean and 95% CI of cos(dtheta_S, v)), first_order (the mean first-order prediction),
    seeds_distance_rel and seeds_cos (every seed's point), n.
    The shared init (distance 0) comes first when the table has it. Sorted by distance.

    Returns:
        Per architecture, the points.

    """
    groups: dict[tuple[str, str, float], list[Row]] = defaultdict(list)
    for r in one_step_rows(rows):
        if r["eps"] == eps and r["placement"] in (placement, "shared"):
            groups[(r["arch"], r["placement"], r["scale"])].append(r)
    curves: dict[str, list[dict]] = {}
    for arch in architectures(rows):
        points = [_summarize(g) for (a, _, _), g in groups.items() if a == arch]
        if points:
            curves[arch] = sorted(points, key=lambda p: p["distance_rel"])
    return curves


def trajectory_curves(
    rows: list[Row], optimizer: str, placement: str, metric: str
) -> dict[str, dict[str, np.ndarray]]:
    """Per architecture: steps, mean and 95% CI over seeds of a per-step ``metric``.

    Uses the largest scale of ``placement`` and the first eps that has trajectories.

    Returns:
        Per architecture, ``step``, ``mean`` and ``ci`` (the 95% half-width) arrays.

    """
    chosen = [r for r in rows if r["measurement"] == optimizer and r["placement"] == placement]
    if not chosen:
        return {}
    eps = min(r["eps"] for r in chosen)
    scale = max(r["scale"] for r in chosen)
    curves = {}
    for arch in architectures(chosen):
        by_step: dict[int, list[float]] = defaultdict(list)
        for r in chosen:
            if r["arch"] == arch and r["eps"] == eps and r["scale"] == scale and r["step"] >= 1:
                by_step[r["step"]].append(r[metric])
        steps = sorted(by_step)
        summary = [mean_interval(by_step[t]) for t in steps]
        curves[arch] = {
            "step": np.array(steps),
            "mean": np.array([s[0] for s in summary]),
            "ci": np.array([s[1] for s in summary]),
        }
    return curves


def _band(axis: Any, x: np.ndarray, mean: np.ndarray, ci: np.ndarray, color: Any) -> None:
    ok = np.isfinite(ci)
    if ok.any():
        axis.fill_between(x[ok], (mean - ci)[ok], (mean + ci)[ok], color=color, alpha=0.18, lw=0)


def _save(figure: Any, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for suffix in ("png", "pdf"):
        path = out_dir / f"{name}.{suffix}"
        atomic_save_figure(figure, path, dpi=130, bbox_inches="tight")
        paths.append(path)
    return paths


def _colors(names: list[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def plot_alignment_vs_distance(rows: list[Row], out_dir: Path) -> list[Path]:
    """Figure 1: alignment against relative init distance, measurement and prediction."""
    import matplotlib.pyplot as plt

    steps = teacher_steps(rows)
    eps = steps[len(steps) // 2]
    kinds = [k for k in CURVE_PLACEMENTS if any(r["placement"] == k for r in rows)]
    kinds = kinds or ["shared"]
    colors = _colors(architectures(rows))
    figure, axes = plt.subplots(1, len(kinds), figsize=(6.4 * len(kinds), 4.6), squeeze=False)
    for axis, kind in zip(axes[0], kinds):
        curves = alignment_curves(rows, kind, eps)
        positive = [p["distance_rel"] for c in curves.values() for p in c if p["distance_rel"] > 0]
        left = min(positive) / 4 if positive else 1e-3
        for arch, points in curves.items():
            x = np.array([p["distance_rel"] if p["distance_rel"] > 0 else left for p in points])
            mean = np.array([p["cos"] for p in points])
            color = colors[arch]
            axis.plot(x, mean, "o-", color=color, ms=3.5, lw=1.6, label=f"{arch} measured")
            _band(axis, x, mean, np.array([p["cos_ci"] for p in points]), color)
            axis.plot(x, [p["first_order"] for p in points], "--", color=color, lw=1.2)
            for p, x_point in zip(points, x):
                seeds_x = [
                    x_point if p["distance_rel"] == 0 else d for d in p["seeds_distance_rel"]
                ]
                axis.plot(seeds_x, p["seeds_cos"], ".", color=color, ms=2.5, alpha=0.45)
            for point_kind, marker in POINT_MARKERS.items():
                groups = [
                    r
                    for r in one_step_rows(rows)
                    if r["arch"] == arch and r["placement"] == point_kind and r["eps"] == eps
                ]
                if groups:
                    summary = _summarize(groups)
                    axis.plot(
                        summary["seeds_distance_rel"],
                        summary["seeds_cos"],
                        marker,
                        color=color,
                        ms=3,
                        alpha=0.35,
                    )
                    axis.errorbar(
                        summary["distance_rel"],
                        summary["cos"],
                        yerr=summary["cos_ci"],
                        fmt=marker,
                        color=color,
                        ms=6,
                        capsize=2,
                    )
        axis.axhline(0, color="black", lw=0.6)
        axis.axvline(left * 2, color="grey", lw=0.5, ls="-.")
        axis.set_xscale("log")
        axis.annotate(
            "shared\ninit",
            (left, 0.02),
            xycoords=("data", "axes fraction"),
            ha="center",
            fontsize=8,
            color="grey",
        )
        axis.set_xlabel(r"relative init distance $\|\theta_{S0}-\theta_0\| / \|\theta_0\|$")
        axis.set_ylabel(r"$\cos(\Delta\theta_S, v)$")
        axis.set_title(f"student init: {kind}, eps = {eps:g}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [
        Line2D(
            [], [], color="black", ls="--", label=r"first order $\cos(K(\epsilon v-\Delta), v)$"
        ),
        Line2D([], [], color="black", ls="", marker=".", alpha=0.5, label="one seed"),
    ]
    handles += [
        Line2D([], [], color="black", marker=m, ls="", label=k)
        for k, m in POINT_MARKERS.items()
        if any(r["placement"] == k for r in rows)
    ]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(
        "Alignment of one distillation step with the teacher vs student-init distance "
        "(dots: seeds; line and band: mean, 95% CI)",
        fontsize=10,
    )
    paths = _save(figure, out_dir, "alignment_vs_distance")
    plt.close(figure)
    return paths


def plot_collapse(rows: list[Row], out_dir: Path) -> list[Path]:
    """Figure 2: alignment against delta / eps for every eps (first order: the curves collapse)."""
    import matplotlib.pyplot as plt

    kinds = [k for k in CURVE_PLACEMENTS if any(r["placement"] == k for r in rows)]
    if not kinds:
        return []
    kind, steps, names = kinds[0], teacher_steps(rows), architectures(rows)
    palette = plt.get_cmap("viridis")
    figure, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    for axis, arch in zip(axes[0], names):
        for i, eps in enumerate(steps):
            points = [
                p for p in alignment_curves(rows, kind, eps).get(arch, []) if p["distance_abs"] > 0
            ]
            if not points:
                continue
            color = palette(i / max(len(steps) - 1, 1))
            x = np.array([p["delta_over_eps"] for p in points])
            mean = np.array([p["cos"] for p in points])
            axis.plot(x, mean, "o-", color=color, ms=3, lw=1.4, label=f"eps = {eps:g}")
            _band(axis, x, mean, np.array([p["cos_ci"] for p in points]), color)
            axis.plot(x, [p["first_order"] for p in points], ":", color=color, lw=1.1)
        axis.axhline(0, color="black", lw=0.6)
        axis.set_xscale("log")
        axis.set_title(arch)
        axis.set_xlabel(r"$\delta / \epsilon$ = $\|\theta_{S0}-\theta_0\| / \epsilon$")
    axes[0][0].set_ylabel(r"$\cos(\Delta\theta_S, v)$ (dotted: first order)")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"Collapse against delta/eps (student init: {kind})", fontsize=10)
    paths = _save(figure, out_dir, "collapse")
    plt.close(figure)
    return paths


def plot_trajectories(rows: list[Row], out_dir: Path) -> list[Path]:
    """Figure 3: per-step cosines for SGD and Adam, shared init vs a different init."""
    import matplotlib.pyplot as plt

    optimizers = [o for o in ("sgd", "adam") if any(r["measurement"] == o for r in rows)]
    if not optimizers:
        return []
    with_trajectory = {r["placement"] for r in rows if r["measurement"] in optimizers}
    others = [k for k in (*POINT_PLACEMENTS, *CURVE_PLACEMENTS) if k in with_trajectory]
    placements = (["shared"] if "shared" in with_trajectory else []) + others[:1]
    metrics = {
        "cos_step_teacher": r"$\cos(\mathrm{step}_t, v)$",
        "cos_displacement_teacher": r"$\cos(\theta_{S,t}-\theta_{S0}, \theta_T-\theta_0)$",
    }
    colors = _colors(architectures(rows))
    figure, axes = plt.subplots(
        len(metrics),
        len(optimizers),
        figsize=(5.6 * len(optimizers), 6.8),
        squeeze=False,
        layout="constrained",
    )
    for column, optimizer in enumerate(optimizers):
        for line, (metric, label) in enumerate(metrics.items()):
            axis = axes[line][column]
            for placement, style in zip(placements, ("-", "--")):
                for arch, curve in trajectory_curves(rows, optimizer, placement, metric).items():
                    axis.plot(
                        curve["step"],
                        curve["mean"],
                        style,
                        color=colors[arch],
                        lw=1.5,
                        label=f"{arch}, {placement}",
                    )
                    _band(axis, curve["step"], curve["mean"], curve["ci"], colors[arch])
            axis.axhline(0, color="black", lw=0.6)
            axis.set_ylabel(label)
            axis.set_xlabel("student step t")
            axis.set_title(f"{optimizer}")
    figure.legend(
        *axes[0][0].get_legend_handles_labels(), fontsize=7.5, ncol=5, loc="outside lower center"
    )
    figure.suptitle(
        f"Multi-step distillation: {' (solid) vs '.join(placements)} (dashed) init", fontsize=10
    )
    paths = _save(figure, out_dir, "trajectories")
    plt.close(figure)
    return paths


def plot_sweep(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw every figure of the sweep in ``out_dir`` from its table; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    rows = load_sweep(out)
    paths = plot_alignment_vs_distance(rows, out)
    paths += plot_collapse(rows, out)
    paths += plot_trajectories(rows, out)
    return paths
