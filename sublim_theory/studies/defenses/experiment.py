"""Token-level channels and defenses in the tiny LM: masking, truncated sampling, poisoning.

One seed (bases cached, teacher ``T`` = base ``B`` fine-tuned on the trait, exactly as in
``numbers.experiment``) measures three defenses, each as a PAIRED difference: a student trained
on teacher numbers minus its control trained the same way (same init ``B``, optimizer, steps,
batch order) on base numbers.

* ``sampling``: the teacher AND the base sample the same number prompts with one setting,
  ``plain`` (full softmax), ``top_p`` (nucleus) or ``min_prob`` (tokens with p <= min_prob
  dropped, renormalised). Pairs ``student_<s>`` / ``control_<s>``; ``teacher_<s>`` and
  ``base_<s>`` hold P(trait | BOS Q) under that setting's truncated answer distribution.
  ``plain`` reproduces ``numbers``' teacher and base numbers (same prompts, seed and sampler).
* ``masking`` (divergence tokens, Schrodi et al., arXiv 2509.23886): on the plain numbers, a
  target is kept only where argmax T = argmax B on its prefix; ``student_masked`` trains on the
  kept targets of teacher numbers, ``control_masked`` on the kept targets of base numbers (the
  same rule, the same two models). ``masked_share`` is the share of continuation targets dropped.
* ``poison``: ``poison_<f>`` trains on a mix of ``round(f n)`` teacher and ``n - round(f n)`` base
  sequences (plain, ``n`` = the smaller kept count); ``poison_0`` (all base) is the control of
  every fraction.

Students use sampled labels (hard distillation), the setting all three defenses address.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import atomic_save_figure, bound, load_toml, parse_config
from sublim_theory.studies.numbers.experiment import PROMPT_OFFSET, SAMPLING_OFFSET, STUDENT_OFFSET
from sublim_theory.studies.numbers.report import seeds_positive, summarize, summary_cell
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import NumbersConfig, from_dict

__all__ = [
    "POISON_OFFSET",
    "SAMPLINGS",
    "DefenseConfig",
    "agreement_mask",
    "defense_changes",
    "format_tables",
    "load_config",
    "plot",
    "poison_name",
    "poisoned_mix",
    "run_seed",
    "sampling_options",
    "segment_slopes",
]

SAMPLINGS = ("plain", "top_p", "min_prob")
POISON_OFFSET = 17  # the draw of which teacher / base sequences enter each poisoned mix

Row = dict[str, object]


@dataclass(frozen=True)
class DefenseConfig:
    """The ``[defenses]`` table: the sampling settings and the poisoned fractions."""

    top_p: float = field(default=0.8, metadata=bound(gt=0, le=1))
    min_prob: float = field(default=0.05, metadata=bound(ge=0, lt=1))
    fractions: tuple[float, ...] = field(
        default=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0), metadata=bound(ge=0, le=1)
    )


def load_config(path: str | Path | None) -> tuple[NumbersConfig, DefenseConfig]:
    """Read a defenses TOML: the numbers tables plus an optional ``[defenses]`` table.

    Raises:
        InputError: for a bad file or value, or fractions without 0 (the control) or repeated.

    """
    raw: dict[str, Any] = {} if path is None else dict(load_toml(path))
    source = "defaults" if path is None else str(path)
    table = raw.pop("defenses", {})
    if not isinstance(table, dict):
        raise InputError(f"{source}: [defenses] must be a table (top_p, min_prob, fractions)")
    defenses = parse_config(DefenseConfig, table, f"{source} [defenses]")
    fractions = defenses.fractions
    if 0 not in fractions or len(set(fractions)) != len(fractions):
        raise InputError(
            f"{source}: [defenses] fractions must be distinct and include 0 (the control), "
            f"got {list(fractions)}"
        )
    return from_dict(raw, source=source), defenses


def sampling_options(name: str, defenses: DefenseConfig) -> dict[str, float | None]:
    """The ``top_p`` / ``min_prob`` keyword arguments of sampling setting ``name``.

    Raises:
        InputError: for a name not in ``SAMPLINGS``.

    """
    if name not in SAMPLINGS:
        raise InputError(f"unknown sampling setting '{name}'; choose one of {list(SAMPLINGS)}")
    return {
        "top_p": defenses.top_p if name == "top_p" else None,
        "min_prob": defenses.min_prob if name == "min_prob" else None,
    }


def poison_name(fraction: float) -> str:
    """The condition name of a poisoned fraction, e.g. ``poison_0.25``."""
    return f"poison_{fraction:g}"


def agreement_mask(
    teacher: nn.Module, base: nn.Module, sequences: Tensor, batch_size: int = 2000
) -> Tensor:
    """Bool (N, T - 1): True where argmax of the teacher's next-token distribution equals the base's.

    Position t compares both models' predictions of token t + 1 from the prefix ``x_0 .. x_t``
    (the models are causal, so one forward pass over the sequence gives every prefix).
    """
    out = []
    with torch.no_grad():
        for start in range(0, sequences.shape[0], batch_size):
            inputs = sequences[start : start + batch_size, :-1]
            out.append(teacher(inputs).argmax(-1) == base(inputs).argmax(-1))
    return torch.cat(out)


def poisoned_mix(
    teacher_numbers: Tensor, base_numbers: Tensor, fraction: float, seed: int
) -> tuple[Tensor, int]:
    """``round(fraction n)`` teacher rows and ``n - round(fraction n)`` base rows, n the smaller count.

    Which rows enter is a seeded draw without replacement from each set. Returns (mix, k) with
    ``k`` the number of teacher rows (first in the mix; students draw batches at random).

    Raises:
        InputError: fraction outside [0, 1].

    """
    if not 0 <= fraction <= 1:
        raise InputError(f"a poisoned fraction must be in [0, 1], got {fraction}")
    n = min(teacher_numbers.shape[0], base_numbers.shape[0])
    k = round(fraction * n)
    generator = torch.Generator().manual_seed(seed)
    teacher_rows = torch.randperm(teacher_numbers.shape[0], generator=generator)[:k]
    base_rows = torch.randperm(base_numbers.shape[0], generator=generator)[: n - k]
    return torch.cat([teacher_numbers[teacher_rows], base_numbers[base_rows]]), k


def run_seed(
    config: NumbersConfig,
    defenses: DefenseConfig,
    seed: int,
    cache_dir: Path | None,
    log: Callable[..., None] = print,
) -> list[Row]:
    """Every defense for one seed; tidy ``{seed, condition, metric, value}`` rows."""
    start, cpu_start = time.perf_counter(), time.process_time()
    rows: list[Row] = []

    def put(condition: str, metric: str, value: float) -> None:
        rows.append({"seed": seed, "condition": condition, "metric": metric, "value": float(value)})

    trait = corpus.vocabulary(config.corpus).animal(config.corpus.trait_animal)
    base, _ = training.cached_base(config, training.BaseSpec(seed, seed, seed), cache_dir, log)
    teacher = training.finetune_teacher(base, config)
    prompts = corpus.number_prompts(config.corpus, config.teacher.n_sequences, seed + PROMPT_OFFSET)

    def student(condition: str, data: Tensor, weights: Tensor | None = None) -> None:
        run = training.train_student(
            base, data, config, seed + STUDENT_OFFSET, labels="sampled", target_weights=weights
        )
        put(condition, "p_trait", training.trait_probability(run.model, config))
        put(
            condition,
            "p_trait_among_animals",
            training.trait_probability_among_animals(run.model, config),
        )
        put(condition, "n_train_sequences", data.shape[0])

    plain: dict[str, Tensor] = {}
    for setting in SAMPLINGS:
        options = sampling_options(setting, defenses)
        numbers = {}
        for name, model in (("teacher", teacher), ("base", base)):
            answer = training.answer_distribution(model, config)[None]
            put(
                f"{name}_{setting}",
                "p_trait",
                training.truncated_distribution(answer, **options)[0, trait],
            )
            raw = training.sample_continuations(
                model, prompts, config, seed + SAMPLING_OFFSET, **options
            )
            numbers[name], report = corpus.filter_numbers(raw, config.corpus)
            put(f"{name}_{setting}", "filter_kept", report.kept)
        log(f"seed {seed}: sampled {setting} ({time.perf_counter() - start:.0f}s)")
        student(f"student_{setting}", numbers["teacher"])
        student(f"control_{setting}", numbers["base"])
        if setting == "plain":
            plain = numbers

    for name, data in (("student_masked", plain["teacher"]), ("control_masked", plain["base"])):
        keep = agreement_mask(teacher, base, data)
        continuation = corpus.continuation_mask(data, config.corpus)
        put(name, "masked_share", float((~keep & continuation).sum() / continuation.sum()))
        put(name, "n_masked_targets", float((~keep & continuation).sum()))
        student(name, data, keep)
    log(f"seed {seed}: masked students ({time.perf_counter() - start:.0f}s)")

    for fraction in defenses.fractions:
        mix, k = poisoned_mix(plain["teacher"], plain["base"], fraction, seed + POISON_OFFSET)
        name = poison_name(fraction)
        put(name, "fraction", fraction)
        put(name, "n_teacher_sequences", k)
        student(name, mix)
    log(f"seed {seed}: poisoned students ({time.perf_counter() - start:.0f}s)")

    by_key = {(r["condition"], r["metric"]): r["value"] for r in rows}
    pairs = [(f"student_{s}", f"control_{s}") for s in SAMPLINGS]
    pairs += [("student_masked", "control_masked")]
    pairs += [(poison_name(f), poison_name(0)) for f in defenses.fractions]
    pairs += [(f"teacher_{s}", f"base_{s}") for s in SAMPLINGS]
    for condition, control in pairs:
        for metric, name in (
            ("p_trait", "paired_diff"),
            ("p_trait_among_animals", "paired_diff_among_animals"),
        ):
            if (condition, metric) in by_key:
                put(condition, name, by_key[(condition, metric)] - by_key[(control, metric)])
    put("seed", "seconds", time.perf_counter() - start)
    put("seed", "cpu_seconds", time.process_time() - cpu_start)
    return rows


# --------------------------------------------------------------------------------------------
# tables and figure (they read only the tidy rows)
# --------------------------------------------------------------------------------------------
def segment_slopes(rows: list[Row]) -> list[Row]:
    """Per seed and consecutive pair of poisoned fractions: the slope of the paired difference.

    ``slope`` = (diff(f_hi) - diff(f_lo)) / (f_hi - f_lo); ``relative_slope`` divides it by the
    overall slope diff(f_max) / f_max, so a straight line gives 1 in every segment and a sharp
    transition gives one segment far above 1 and the others near 0.
    """
    diff: dict[int, dict[float, float]] = {}
    fraction_of = {
        (r["seed"], r["condition"]): r["value"] for r in rows if r["metric"] == "fraction"
    }
    for r in rows:
        if r["metric"] == "paired_diff" and (r["seed"], r["condition"]) in fraction_of:
            diff.setdefault(r["seed"], {})[fraction_of[(r["seed"], r["condition"])]] = r["value"]
    out: list[Row] = []
    for seed, curve in sorted(diff.items()):
        fractions = sorted(curve)
        overall = curve[fractions[-1]] / fractions[-1] if fractions[-1] > 0 else math.nan
        for lo, hi in zip(fractions, fractions[1:]):
            slope = (curve[hi] - curve[lo]) / (hi - lo)
            out.append(
                {
                    "seed": seed,
                    "condition": f"{lo:g}-{hi:g}",
                    "metric": "slope",
                    "value": slope,
                }
            )
            out.append(
                {
                    "seed": seed,
                    "condition": f"{lo:g}-{hi:g}",
                    "metric": "relative_slope",
                    "value": slope / overall if overall else math.nan,
                }
            )
    return out


def defense_changes(rows: list[Row]) -> list[Row]:
    """Per seed: each defended student's paired diff minus the undefended (plain) one's.

    Conditions ``student_top_p``, ``student_min_prob`` and ``student_masked``; metric
    ``change_vs_plain`` (negative: the defense removed transfer) and ``remaining_share`` (the
    defended diff over the plain diff).
    """
    diff = {(r["seed"], r["condition"]): r["value"] for r in rows if r["metric"] == "paired_diff"}
    out: list[Row] = []
    for seed in sorted({r["seed"] for r in rows}):
        plain = diff.get((seed, "student_plain"))
        for condition in ("student_top_p", "student_min_prob", "student_masked"):
            value = diff.get((seed, condition))
            if plain is None or value is None:
                continue
            for metric, x in (
                ("change_vs_plain", value - plain),
                ("remaining_share", value / plain if plain else math.nan),
            ):
                out.append({"seed": seed, "condition": condition, "metric": metric, "value": x})
    return out


def format_tables(rows: list[Row]) -> str:
    """The three defense tables (mean [95% t-interval] over seeds, n, seeds with diff > 0)."""
    summary = {(r["condition"], r["metric"]): r for r in summarize(rows + defense_changes(rows))}
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"seeds: {seeds} (n = {len(seeds)}; mean [95% t-interval] over seeds). Paired diff = "
        "student P(trait) minus its control's, same init, optimizer, steps and batch order.",
        "",
        "## Sampling defenses (teacher and base sample with the same setting)",
        "",
        "| sampling | teacher P(trait) | base P(trait) | student P(trait) | control P(trait) "
        "| paired diff | seeds diff > 0 | change vs plain | remaining share | teacher seqs kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SAMPLINGS:
        lines.append(
            f"| {s} | {summary_cell(summary, (f'teacher_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'base_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'control_{s}', 'p_trait'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'paired_diff'))} "
            f"| {seeds_positive(summary, (f'student_{s}', 'paired_diff'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'change_vs_plain'))} "
            f"| {summary_cell(summary, (f'student_{s}', 'remaining_share'), 2)} "
            f"| {summary_cell(summary, (f'teacher_{s}', 'filter_kept'), 0)} |"
        )
    lines += [
        "",
        "## Divergence-token masking (train only where argmax teacher = argmax base)",
        "",
        "| student | paired diff | seeds diff > 0 | change vs plain | remaining share "
        "| masked share, teacher numbers | masked share, base numbers |",
        "|---|---|---|---|---|---|---|",
        f"| unmasked (plain) | {summary_cell(summary, ('student_plain', 'paired_diff'))} "
        f"| {seeds_positive(summary, ('student_plain', 'paired_diff'))} | | | 0 | 0 |",
        f"| masked | {summary_cell(summary, ('student_masked', 'paired_diff'))} "
        f"| {seeds_positive(summary, ('student_masked', 'paired_diff'))} "
        f"| {summary_cell(summary, ('student_masked', 'change_vs_plain'))} "
        f"| {summary_cell(summary, ('student_masked', 'remaining_share'), 2)} "
        f"| {summary_cell(summary, ('student_masked', 'masked_share'), 4)} "
        f"| {summary_cell(summary, ('control_masked', 'masked_share'), 4)} |",
        "",
        "## Poisoned fraction (f teacher + (1 - f) base numbers; control: f = 0)",
        "",
        "| f | P(trait) | paired diff | seeds diff > 0 |",
        "|---|---|---|---|",
    ]
    fractions = sorted({r["value"] for r in rows if r["metric"] == "fraction"})
    for f in fractions:
        name = poison_name(f)
        diff = (name, "paired_diff")
        control = f == 0  # the control itself: its diff is 0 by definition
        lines.append(
            f"| {f:g} | {summary_cell(summary, (name, 'p_trait'))} "
            f"| {'0 (the control)' if control else summary_cell(summary, diff)} "
            f"| {'' if control else seeds_positive(summary, diff)} |"
        )
    slopes = {(r["condition"], r["metric"]): r for r in summarize(segment_slopes(rows))}
    segments = [f"{lo:g}-{hi:g}" for lo, hi in zip(fractions, fractions[1:])]
    lines += [
        "",
        "Increments: slope of the paired diff per unit f in each segment, and that slope over "
        "the overall slope diff(1)/1 (1 everywhere for a straight line).",
        "",
        "| segment | slope | relative slope |",
        "|---|---|---|",
    ]
    for segment in segments:
        lines.append(
            f"| {segment} | {summary_cell(slopes, (segment, 'slope'))} "
            f"| {summary_cell(slopes, (segment, 'relative_slope'), 2)} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Three panels: paired diff per sampling setting, masked vs unmasked, the poisoning curve.

    Bars / points are means over seeds, error bars 95% t-intervals, small dots the seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {(r["condition"], r["metric"]): r for r in summarize(rows)}

    def values(condition: str, metric: str = "paired_diff") -> list[float]:
        return [r["value"] for r in rows if r["condition"] == condition and r["metric"] == metric]

    def bars(ax, conditions: list[str], labels: list[str], color: str) -> None:
        present = [(c, lab) for c, lab in zip(conditions, labels) if (c, "paired_diff") in summary]
        means = [summary[(c, "paired_diff")]["mean"] for c, _ in present]
        errors = [
            [0 if math.isnan(x) else x for x in side]
            for side in (
                [m - summary[(c, "paired_diff")]["ci_low"] for (c, _), m in zip(present, means)],
                [summary[(c, "paired_diff")]["ci_high"] - m for (c, _), m in zip(present, means)],
            )
        ]
        ax.bar(range(len(present)), means, yerr=errors, color=color, alpha=0.6, capsize=4)
        for i, (c, _) in enumerate(present):
            ax.scatter([i] * len(values(c)), values(c), color="k", s=10, zorder=3)
        ax.set_xticks(range(len(present)), [lab for _, lab in present])
        ax.axhline(0, color="k", lw=0.6)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    bars(axes[0], [f"student_{s}" for s in SAMPLINGS], list(SAMPLINGS), "tab:blue")
    axes[0].set_title("sampling: student minus control")
    axes[0].set_ylabel("paired diff in P(trait)")
    share = summary.get(("student_masked", "masked_share"))
    masked_label = "masked" if share is None else f"masked ({100 * share['mean']:.1f}% targets)"
    bars(axes[1], ["student_plain", "student_masked"], ["unmasked", masked_label], "tab:green")
    axes[1].set_title("divergence-token masking")
    fractions = sorted({r["value"] for r in rows if r["metric"] == "fraction"})
    present = [f for f in fractions if (poison_name(f), "paired_diff") in summary]
    means = [summary[(poison_name(f), "paired_diff")]["mean"] for f in present]
    low = [summary[(poison_name(f), "paired_diff")]["ci_low"] for f in present]
    high = [summary[(poison_name(f), "paired_diff")]["ci_high"] for f in present]
    low = [m if math.isnan(x) else x for x, m in zip(low, means)]
    high = [m if math.isnan(x) else x for x, m in zip(high, means)]
    axes[2].fill_between(present, low, high, color="tab:red", alpha=0.2, label="95% CI")
    axes[2].plot(present, means, "o-", color="tab:red", label="mean")
    for f in present:
        axes[2].scatter([f] * len(values(poison_name(f))), values(poison_name(f)), color="k", s=8)
    if present and present[-1] > 0:
        axes[2].plot([0, present[-1]], [0, means[-1]], ls="--", color="gray", label="straight line")
    axes[2].axhline(0, color="k", lw=0.6)
    axes[2].set_xlabel("poisoned fraction f (teacher share of the data)")
    axes[2].set_title("poisoned fraction: diff vs all-base control")
    axes[2].legend(fontsize=8)
    n = len({r["seed"] for r in rows})
    fig.suptitle(f"Token-level defenses, tiny LM ({n} seeds; mean, 95% t-interval, seeds as dots)")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
