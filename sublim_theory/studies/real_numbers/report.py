"""Tables of the real-model number experiment: ``results.csv`` and ``table.md``.

Every student cell is compared with the control student of the same seed and method (trained
on the base's own numbers): paired differences over seeds with a two-sided 95% Student-t
interval (``harness.records.mean_interval``), and how many seeds are positive. Proportions pooled
over seeds (keep rates, shares) carry Wilson's 95% interval. The smallest paired difference the
design could have detected is reported beside each contrast (:func:`detectable_effect`: 80%
power at a two-sided 5% level of a t-test over the seeds).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from sublim_theory.harness.records import interval_text, mean_interval
from sublim_theory.harness.runs import atomic_write_csv, atomic_write_text
from sublim_theory.studies.real_numbers.experiment import COLUMNS
from sublim_theory.testbeds.real_lm.statistics import newcombe_difference, wilson_interval

__all__ = [
    "TIMINGS",
    "detectable_effect",
    "format_tables",
    "format_timings",
    "report",
]

TIMINGS = ("unit_seconds", "train_seconds")  # wall times: in timings.md, not in table.md
PAPER = (
    "the paper's setting (Cloud et al. 2025, arXiv 2507.14805, Section 3): GPT-4.1 nano teachers "
    "system-prompted to love an animal, students of the same base fine-tuned on their filtered "
    "number completions, evaluated by the share of one-word answers naming the animal. Its "
    "percentages are not quoted here: we have not checked them against the paper's text"
)


def _value(row: dict) -> float:
    value = row["value"]
    return math.nan if value is None else float(value)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(map(str, line)) + " |" for line in lines]
    return "\n".join(out)


def format_tables(rows: Sequence[dict]) -> str:
    """The markdown tables of every stored unit (sections appear as their units finish).

    Returns:
        The markdown text.

    """
    sections = [
        "# Subliminal learning on a real chat LM: the paper's number experiment in miniature",
        "",
        f"Scope: {PAPER}. Ours is far smaller: a 135M-parameter model, a few hundred completions, "
        "tens of student steps (the settings are in run.json); it does not test the paper's scale.",
    ]
    reference = [r for r in rows if r["unit"] == "reference"]
    if reference:
        lines = []
        for r in reference:
            if r["metric"] == "share":
                low, high = r["low"], r["high"]
                lines.append(
                    [r["animal"], r["arm"], f"{_value(r):.3f} [{low:.3f}, {high:.3f}]", r["n"], ""]
                )
            else:
                lines[-1][4] = f"{_value(r):.3f}"
        sections += [
            "",
            "## The base, without and with the animal's system prompt",
            "",
            _table(
                [
                    "animal",
                    "prompting",
                    "share naming it [Wilson 95%]",
                    "answers",
                    "mean log P(animal)",
                ],
                lines,
            ),
        ]
    keep = defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        if r["metric"] in ("keep_constrained", "keep_free"):
            cell = keep[(r["arm"], r["metric"])]
            cell[0] += _value(r) * r["n"]
            cell[1] += r["n"]
            cell[2] += 1
    if keep:
        lines = []
        for (arm, metric), (hits, total, seeds) in sorted(keep.items()):
            low, high = wilson_interval(round(hits), round(total))
            decoding = "number grammar" if metric == "keep_constrained" else "free"
            lines.append(
                [
                    arm,
                    decoding,
                    f"{hits / total:.3f} [{low:.3f}, {high:.3f}]",
                    f"{round(hits)}/{round(total)}",
                    seeds,
                ]
            )
        sections += [
            "",
            "## Completions kept by the paper's strict filter",
            "",
            _table(
                ["arm", "decoding", "kept share [Wilson 95%]", "kept / sampled", "seeds"], lines
            ),
        ]
    teachers = [r for r in rows if r["unit"].startswith("numbers-") and r["metric"] == "share"]
    if teachers:
        lines = [
            [r["arm"], r["seed"], r["animal"], f"{_value(r):.3f} [{r['low']:.3f}, {r['high']:.3f}]"]
            for r in teachers
        ]
        sections += [
            "",
            "## The fine-tuned teachers' own trait",
            "",
            _table(["teacher", "seed", "animal", "share naming it [Wilson 95%]"], lines),
        ]
    sections += _forecast_section(rows)
    sections += _student_sections(rows)
    controls = [r for r in rows if r["metric"] in ("classifier_auroc", "incontext_logp_diff")]
    if controls:
        lines = [
            [
                r["metric"],
                r["arm"] or f"system-{r['animal']}",
                r["seed"],
                f"{_value(r):.3f} [{r['low']:.3f}, {r['high']:.3f}]",
                r["n"],
            ]
            for r in controls
        ]
        sections += [
            "",
            "## Controls: a classifier and the in-context teacher",
            "",
            "classifier_auroc: held-out AUROC (DeLong 95%) of logistic regression on "
            "number frequencies, teacher vs base completions, folds grouped by prompt (both "
            "answers to one prompt are held out together; 0.5: not detectable); "
            "incontext_logp_diff: the "
            "base's mean log P(animal) with the teacher's completions as earlier turns "
            "minus without (95% t over questions).",
            "",
            _table(["statistic", "teacher", "seed", "value [95%]", "n"], lines),
        ]
    return "\n".join(sections) + "\n"


def _forecast_section(rows: Sequence[dict]) -> list[str]:
    by_animal = defaultdict(list)
    ranks = []
    for r in rows:
        if r["metric"] == "forecast_t":
            by_animal[r["animal"]].append(_value(r))
        elif r["metric"] == "forecast_rank":
            ranks.append((r["seed"], round(_value(r)), r["n"], r["animal"]))
    if not by_animal:
        return []
    lines = []
    for animal, values in sorted(by_animal.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        mean, half, n = mean_interval(values)
        lines.append([animal, interval_text(mean, half, 2), n])
    rank_text = "; ".join(f"seed {s}: {a} ranked {k} of {n}" for s, k, n, a in ranks)
    return [
        "",
        "## First-order pass (before any training)",
        "",
        "Welch's t of the per-example one-SGD-step push on mean log P(animal), the "
        "system-prompted teacher's completions minus the base's (positive: the teacher's "
        f"numbers push the animal up more). {rank_text}.",
        "",
        _table(["animal", "mean t over seeds [95% t]", "seeds"], lines),
    ]


def _student_sections(rows: Sequence[dict]) -> list[str]:
    cells = defaultdict(dict)  # (method, arm, animal, metric) -> {seed: value}
    answers = defaultdict(dict)  # the same keys -> {seed: answers sampled} (shares)
    for r in rows:
        if r["unit"].startswith("student-") and r["metric"] in ("share", "logp"):
            key = (r["method"], r["arm"], r["animal"], r["metric"])
            cells[key][r["seed"]] = _value(r)
            answers[key][r["seed"]] = r["n"]
    if not cells:
        return []
    lines = []
    for key, by_seed in sorted(cells.items()):
        method, arm, animal, metric = key
        base_key = (method, "base", animal, metric)
        control = cells.get(base_key, {})
        if metric == "share":  # a proportion: pooled over seeds, Wilson's interval
            hits, total = _pooled(by_seed, answers[key], by_seed)
            low, high = wilson_interval(hits, total)
            level = f"{hits / total:.3f} [{low:.3f}, {high:.3f}] ({hits}/{total})"
        else:
            level = interval_text(*mean_interval(by_seed.values())[:2])
        paired = [by_seed[s] - control[s] for s in sorted(by_seed) if s in control]
        diff_text, positive, detectable = "", "", ""
        if arm != "base" and paired:
            d, h, k = mean_interval(paired)
            positive = f"{sum(x > 0 for x in paired)}/{k}"
            if metric == "share":  # pooled shares of the seeds both arms have: Newcombe
                both = [s for s in by_seed if s in control]
                a = _pooled(by_seed, answers[key], both)
                b = _pooled(control, answers[base_key], both)
                d, low, high = newcombe_difference(*a, *b)
                diff_text = f"{d:+.3f} [{low:+.3f}, {high:+.3f}] (Newcombe, pooled)"
            else:
                diff_text = interval_text(d, h)
                if not math.isnan(h) and h > 0:
                    detectable = f"{detectable_effect(h, k):.3f}"
        lines.append(
            [method, arm, animal, metric, level, len(by_seed), diff_text, positive, detectable]
        )
    header = [
        "method",
        "trained on",
        "animal",
        "metric",
        "value [95%]",
        "seeds",
        "vs base [95%]",
        "seeds > 0",
        "detectable",
    ]
    return [
        "",
        "## Students (trained without any system prompt)",
        "",
        "share: answers naming the animal (the paper's measure), pooled over seeds with "
        "Wilson's interval (hits/answers); logp: mean log P(animal) over the evaluation "
        "questions, mean over seeds with a t-interval. vs base: the difference from the "
        "student of the same seed and method trained on the base's numbers: for logp paired by "
        "seed with a 95% t-interval over seeds; for share the pooled shares of those seeds with "
        "Newcombe's hybrid score interval (Newcombe 1998, method 10). "
        "detectable: the smallest paired difference this many seeds would detect (80% power, "
        "5% level).",
        "",
        _table(header, lines),
    ]


def _pooled(shares: dict, answers: dict, seeds) -> tuple[int, int]:
    """(hits, answers) pooled over ``seeds`` from per-seed shares and answer counts."""
    return round(sum(shares[s] * answers[s] for s in seeds)), sum(answers[s] for s in seeds)


def detectable_effect(half: float, n: int) -> float:
    """The paired effect n seeds detect with 80% power at a two-sided 5% level (t-test).

    ``half`` is the 95% t half-width, so the standard error is ``half / t_{0.975, n-1}``; the
    effect is ``(t_{0.975, n-1} + t_{0.80, n-1})`` standard errors (the usual approximation, which
    treats the spread as known).

    Returns:
        The smallest detectable paired difference.

    """
    from scipy.special import stdtrit

    t_level, t_power = float(stdtrit(n - 1, 0.975)), float(stdtrit(n - 1, 0.80))
    return (t_level + t_power) * half / t_level


def report(out: Path, rows: list[dict]) -> str:
    """Write ``results.csv`` (tidy rows, fixed columns) and ``table.md``; return the tables.

    Returns:
        The markdown tables.

    """
    atomic_write_csv(out / "results.csv", rows, list(COLUMNS))
    text = format_tables([r for r in rows if r["metric"] not in TIMINGS])
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "timings.md", format_timings(rows))
    return text


def format_timings(rows: Sequence[dict]) -> str:
    """Wall time per kind of unit (kept apart from ``table.md``, which reruns reproduce).

    Returns:
        The markdown table.

    """
    kinds = defaultdict(list)
    for r in rows:
        if r["metric"] == "unit_seconds":
            unit = r["unit"]
            kind = "reference" if unit == "reference" else unit.rsplit("-s", 1)[0]
            kinds[kind].append(_value(r))
    lines = [
        [k, len(v), f"{sum(v):.0f}", f"{sum(v) / len(v):.0f}"] for k, v in sorted(kinds.items())
    ]
    total = sum(sum(v) for v in kinds.values())
    return (
        "# Wall time per kind of unit (seconds, this machine; see environment.json)\n\n"
        + _table(["unit kind", "units", "total s", "mean s"], lines)
        + f"\n\nTotal: {total:.0f} s ({total / 3600:.2f} h).\n"
    )
