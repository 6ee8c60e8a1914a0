"""Tables of the cross-family control: keep rates, and the paired trait contrasts per seed.

The cross-family contrast of seed S is ``d_S = m(gemma-owl student) - m(gemma-base student)`` and
the same-family contrast ``e_S = m(system-owl student) - m(base student)`` from the numbers
folder, m the mean log P(animal) over the evaluation questions (or the share of sampled answers
naming it). For log P, over the seeds both are reported as mean +- t_{0.975, n-1} s / sqrt(n)
(a 95% t-interval, n seeds), and so is the difference d_S - e_S over the seeds that have both. For
the share (a proportion, mostly 0 here) the answers are pooled over the seeds both arms have and
the difference of the two pooled shares gets Newcombe's hybrid score interval (Newcombe 1998,
method 10), which keeps a positive width at 0/n vs 0/n.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from sublim_theory.harness.records import interval_text, mean_interval
from sublim_theory.harness.runs import atomic_write_csv, atomic_write_text
from sublim_theory.studies.real_cross.experiment import ARMS, COLUMNS, NumbersSource
from sublim_theory.studies.real_numbers.report import format_timings
from sublim_theory.testbeds.real_lm.statistics import newcombe_difference, wilson_interval

__all__ = ["SOURCE", "TIMINGS", "format_tables", "format_timings", "make_report"]

TIMINGS = ("unit_seconds", "train_seconds")
SOURCE = (
    'Cloud et al. 2025, "Subliminal Learning", arXiv 2507.14805, cross-model section: '
    "numbers from a teacher of another model family do not transmit its trait (transfer needs "
    "a shared initialization)"
)


def _table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> str:
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    rows += ["| " + " | ".join(str(x) for x in line) + " |" for line in lines]
    return "\n".join(rows)


def _keep_section(rows: Sequence[dict]) -> list[str]:
    pooled = defaultdict(lambda: [0, 0])  # (arm, metric) -> [kept, total]
    for r in rows:
        if r["metric"] in ("keep_constrained", "keep_free"):
            cell = pooled[(r["arm"], r["metric"])]
            cell[0] += round(r["value"] * r["n"])
            cell[1] += r["n"]
    lines = []
    for arm in ARMS:
        line = [arm]
        for metric in ("keep_constrained", "keep_free"):
            kept, total = pooled.get((arm, metric), (0, 0))
            if total:
                low, high = wilson_interval(kept, total)
                line.append(f"{kept / total:.3f} [{low:.3f}, {high:.3f}] ({kept}/{total})")
            else:
                line.append("not run")
        lines.append(line)
    return [
        "## Teacher's keep rates (the paper's strict filter), pooled over seeds",
        "",
        "constrained: sampled under the number grammar (the newline ends the answer); free: "
        "sampled without it. Wilson 95% intervals.",
        "",
        _table(["arm", "constrained [95%]", "free [95%]"], lines),
    ]


def _cells(rows: Sequence[dict], stored: Sequence[dict], animal: str):
    """(arm, metric) -> {seed: value}, and (arm, "answers") -> {seed: answers sampled}.

    Our students' rows and the folder's stored ones (``system-ANIMAL`` becomes ``system``).

    Returns:
        The cells.

    """
    cells = defaultdict(dict)
    for r in [*rows, *stored]:
        if r["metric"] in ("share", "logp") and r["animal"] == animal:
            arm = r["arm"].replace(f"system-{animal}", "system")
            cells[(arm, r["metric"])][r["seed"]] = float(r["value"])
            if r["metric"] == "share":
                cells[(arm, "answers")][r["seed"]] = int(r["n"])
    return cells


def _pooled_share_difference(cells, high: str, low: str) -> tuple[str, int]:
    """The pooled share of ``high`` minus that of ``low`` (seeds both have), Newcombe's interval."""
    a, b = cells.get((high, "share"), {}), cells.get((low, "share"), {})
    seeds = [s for s in sorted(a) if s in b]
    if not seeds:
        return "no seed", 0
    counts = []
    for arm, shares in ((high, a), (low, b)):
        answers = cells[(arm, "answers")]
        counts += [
            round(sum(shares[s] * answers[s] for s in seeds)),
            sum(answers[s] for s in seeds),
        ]
    d, lo, hi = newcombe_difference(*counts)
    return (
        f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] ({counts[0]}/{counts[1]} vs {counts[2]}/{counts[3]}, "
        "Newcombe, pooled)",
        len(seeds),
    )


def _contrast(cells, metric: str, high: str, low: str) -> dict[int, float]:
    a, b = cells.get((high, metric), {}), cells.get((low, metric), {})
    return {s: a[s] - b[s] for s in sorted(a) if s in b}


def format_tables(rows: Sequence[dict], source: NumbersSource, seeds: Sequence[int]) -> str:
    """The keep rates, the per-seed contrasts and their 95% t-intervals (module docstring).

    Returns:
        The markdown text.

    """
    animal = source.student["animal"]
    cells = _cells(rows, source.stored, animal)
    lines = [
        f"# Cross-family control: {animal} numbers from Gemma 3 270M, SmolLM2 students",
        "",
        f"Source of the claim tested: {SOURCE}.",
        "",
        "Scope: one teacher of another family (Gemma 3 270M base, the owl preamble in plain "
        "text; it has no system turn), SmolLM2-135M-Instruct LoRA students trained exactly as "
        f"the numbers folder's (rank {source.student['lora_rank']}, lr "
        f"{source.student['lora_lr']}, {source.student['student_steps']} steps of "
        f"{source.student['student_batch']}), {len(seeds)} seed(s) of "
        f"{source.student['prompts']} prompts; a miniature of the paper's setting, not its "
        "size.",
        "",
        *_keep_section(rows),
        "",
        "## Students per seed (trained without any system prompt)",
        "",
        f"logp: mean log P({animal}) over the evaluation questions; share: sampled answers "
        f"naming {animal}. cross = gemma-owl student - gemma-base student; same = the numbers "
        "folder's system-owl student - its base student (same seed, same prompts, same "
        "settings).",
        "",
    ]
    per_seed = []
    for seed in seeds:
        line = [seed]
        for metric in ("logp", "share"):
            for arm in ("gemma-owl", "gemma-base"):
                value = cells.get((arm, metric), {}).get(seed)
                line.append("" if value is None else f"{value:.3f}")
            for high, low in (("gemma-owl", "gemma-base"), ("system", "base")):
                value = _contrast(cells, metric, high, low).get(seed)
                line.append("" if value is None else f"{value:+.3f}")
        per_seed.append(line)
    header = ["seed"]
    for metric in ("logp", "share"):
        header += [f"{metric} gemma-owl", f"{metric} gemma-base", f"{metric} cross",
                   f"{metric} same"]  # fmt: skip
    lines += [
        _table(header, per_seed),
        "",
        "## Paired contrasts over seeds (logp: 95% t-intervals; share: Newcombe)",
        "",
    ]
    summary = []
    cross = _contrast(cells, "logp", "gemma-owl", "gemma-base")
    same = _contrast(cells, "logp", "system", "base")
    gap = {s: cross[s] - same[s] for s in cross if s in same}
    for name, values in (
        ("cross-family (gemma-owl - gemma-base)", cross),
        ("same-family (system-owl - base, stored)", same),
        ("cross - same", gap),
    ):
        mean, half, n = mean_interval(values.values())
        text = "no seed" if n == 0 else interval_text(mean, half)
        summary.append(["logp", name, text, n, f"{sum(v > 0 for v in values.values())}/{n}"])
    for name, (high, low) in (
        ("cross-family (gemma-owl - gemma-base)", ("gemma-owl", "gemma-base")),
        ("same-family (system-owl - base, stored)", ("system", "base")),
    ):
        text, n = _pooled_share_difference(cells, high, low)
        positive = sum(v > 0 for v in _contrast(cells, "share", high, low).values())
        summary.append(["share", name, text, n, f"{positive}/{n}"])
    lines += [_table(["metric", "contrast", "mean [95%]", "seeds", "seeds > 0"], summary), ""]
    return "\n".join(lines)


def make_report(source: NumbersSource, seeds: Sequence[int]):
    """The study's report function: ``report(out, rows) -> text``.

    Writes ``results.csv`` (our rows), ``table.md`` (no wall times, so a rerun reproduces it)
    and ``timings.md``.

    Returns:
        The report function.

    """

    def report(out: Path, rows: list[dict]) -> str:
        atomic_write_csv(out / "results.csv", rows, list(COLUMNS))
        text = format_tables([r for r in rows if r["metric"] not in TIMINGS], source, seeds)
        atomic_write_text(out / "table.md", text)
        atomic_write_text(out / "timings.md", format_timings(rows))
        return text

    return report
