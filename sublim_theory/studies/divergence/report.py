"""The divergence study's reports: ``table.md``, ``results.csv`` and ``summary.csv`` from the rows.

Every CSV is written with a fixed column order, so a resumed run writes the same bytes as an
uninterrupted one. Means over seeds carry 95% Student-t intervals; the pooled token shares
carry Wilson intervals (token counts summed over seeds; tokens of one sequence are not
independent, so the Wilson interval is a lower bound on the real uncertainty, and the t-interval
over seeds beside it is the one to read).
"""

from __future__ import annotations

from pathlib import Path

from sublim_theory.harness.runs import atomic_write_text
from sublim_theory.studies.divergence.experiment import ARMS, Row
from sublim_theory.studies.numbers import report as numbers_report
from sublim_theory.studies.numbers.report import seeds_positive, summarize, summary_cell, write_csv
from sublim_theory.testbeds.real_lm.statistics import wilson_interval

__all__ = ["COLUMNS", "THEIRS", "format_tables", "pooled_share", "scope", "write_reports"]

COLUMNS = {
    "results.csv": ("seed", "condition", "metric", "value"),
    "summary.csv": numbers_report.COLUMNS["summary.csv"],
}

THEIRS = (
    "Their setting (Schrodi et al., arXiv 2509.23886): LLM teachers with different biases "
    "fine-tuned from one base, greedy decoding, divergence tokens where the teachers' greedy "
    "choices differ, masked from the student's loss."
)


def scope(rows: list[Row]) -> str:
    """The scope line: their setting, then ours read from the run's own ``scope`` rows."""
    value = {r["metric"]: r["value"] for r in rows if r["condition"] == "scope"}
    if not value:
        return f"Scope. {THEIRS} This does not test their LLM setting."
    return (
        f"Scope. {THEIRS} Ours: the same definition on a toy LM of {int(value['n_parameters']):,} "
        f"parameters ({int(value['pretrain_steps']):,} pretraining steps; teachers = base + "
        f"{int(value['teacher_steps'])} Adam steps on 'BOS Q animal EOS'; students = base + "
        f"{int(value['student_steps'])} steps at lr {value['student_lr']:g}, hard labels). This does not "
        "test their LLM setting."
    )


LABELS = {
    "unmasked": "unmasked",
    "masked": "masked (divergent targets weigh 0)",
    "replaced": "replaced (divergent tokens := other teacher's argmax)",
}


def write_reports(out: Path, rows: list[Row]) -> str:
    """Write ``results.csv``, ``summary.csv`` and ``table.md`` (each atomically); return the tables."""
    write_csv(out / "results.csv", rows, COLUMNS["results.csv"])
    write_csv(out / "summary.csv", summarize(rows), COLUMNS["summary.csv"])
    table = format_tables(rows)
    atomic_write_text(out / "table.md", table + "\n")
    return table


def pooled_share(rows: list[Row], condition: str, hits: str, total: str) -> str:
    """``"k/n = share [Wilson 95%]"`` of counts ``hits`` over ``total`` summed over seeds; "" if absent."""
    k = sum(r["value"] for r in rows if r["condition"] == condition and r["metric"] == hits)
    n = sum(r["value"] for r in rows if r["condition"] == condition and r["metric"] == total)
    if n < 1:
        return ""
    low, high = wilson_interval(int(k), int(n))
    return f"{int(k)}/{int(n)} = {k / n:.4f} [{low:.4f}, {high:.4f}]"


def format_tables(rows: list[Row]) -> str:
    """The teachers, divergence-token and student tables (mean [95% t-interval] over seeds)."""
    summary = {(r["condition"], r["metric"]): r for r in summarize(rows)}
    seeds = sorted({r["seed"] for r in rows})

    def cell(condition: str, metric: str, digits: int = 3) -> str:
        return summary_cell(summary, (condition, metric), digits)

    lines = [
        scope(rows),
        "",
        f"seeds: {seeds} (n = {len(seeds)}; mean [95% t-interval] over seeds). Teacher A: the "
        "trait animal; teacher O: the other animal; both from the same base. Paired diff = "
        "student minus its control (trained identically on the base's greedy numbers with the "
        "same rule: same init, optimizer, steps and batch order).",
        "",
        "## Teachers and greedy data",
        "",
        "| model | P(trait) | P(other) | greedy docs kept |",
        "|---|---|---|---|",
        f"| teacher A (trait) | {cell('teacher', 'p_trait')} | {cell('teacher', 'p_other')} "
        f"| {cell('teacher_greedy', 'filter_kept', 0)} |",
        f"| teacher O (other) | {cell('other_teacher', 'p_trait')} "
        f"| {cell('other_teacher', 'p_other')} | |",
        f"| base | {cell('base', 'p_trait')} | {cell('base', 'p_other')} "
        f"| {cell('base_greedy', 'filter_kept', 0)} |",
        "",
        f"Distinct prompts: {cell('prompts', 'n_distinct', 0)} per seed (greedy decoding gives "
        "one continuation per distinct prompt). Targets of A's greedy data where A's argmax on "
        f"the prefix is not A's own token (float ties; expected 0): "
        f"{cell('teacher_greedy', 'greedy_mismatch', 0)}.",
        "",
        "## Divergence tokens (share of continuation targets: the numbers and EOS)",
        "",
        "| data | rule | share, mean over seeds | pooled k/n [Wilson] |",
        "|---|---|---|---|",
        f"| teacher A's greedy numbers | argmax A != argmax O (theirs) "
        f"| {cell('teacher_greedy', 'divergent_share', 4)} "
        f"| {pooled_share(rows, 'teacher_greedy', 'n_divergent', 'n_targets')} |",
        f"| base's greedy numbers (control) | argmax A != argmax O "
        f"| {cell('base_greedy', 'divergent_share', 4)} "
        f"| {pooled_share(rows, 'base_greedy', 'n_divergent', 'n_targets')} |",
        f"| teacher A's greedy numbers | argmax A != argmax base (beside: our defenses rule) "
        f"| {cell('teacher_greedy', 'base_divergent_share', 4)} "
        f"| {pooled_share(rows, 'teacher_greedy', 'n_base_divergent', 'n_targets')} |",
        f"| teacher A's greedy numbers | both rules at once "
        f"| {cell('teacher_greedy', 'both_divergent_share', 4)} | |",
        "",
        "Replacement: share of targets whose token changed, teacher data "
        f"{cell('teacher_greedy', 'replaced_changed_share', 4)}, base data "
        f"{cell('base_greedy', 'replaced_changed_share', 4)}; documents the replacement made "
        f"ill-formed (a non-number in the numbers, or no final EOS): teacher data "
        f"{cell('teacher_greedy', 'replaced_ill_formed_docs', 1)}, base data "
        f"{cell('base_greedy', 'replaced_ill_formed_docs', 1)}.",
        "",
        "## Students on teacher A's greedy numbers, each minus its control",
        "",
        "| arm | student P(trait) | control P(trait) | paired diff P(trait) | seeds diff > 0 "
        "| change vs unmasked | remaining share | paired diff P(other) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        student = f"student_{arm}"
        lines.append(
            f"| {LABELS[arm]} | {cell(student, 'p_trait')} | {cell(f'control_{arm}', 'p_trait')} "
            f"| {cell(student, 'paired_diff_p_trait')} "
            f"| {seeds_positive(summary, (student, 'paired_diff_p_trait'))} "
            f"| {cell(student, 'change_vs_unmasked')} | {cell(student, 'remaining_share', 2)} "
            f"| {cell(student, 'paired_diff_p_other')} |"
        )
    lines += [
        "",
        "Remaining share = the arm's paired diff over the unmasked arm's, per seed (mean "
        "[t-interval] of the per-seed ratios). For comparison, as the issue quotes it (not "
        "verified here): a 2026 reproduction of Weckbecker et al. found masking leaves 43% of "
        "the effect and replacement 9%.",
    ]
    return "\n".join(lines)
