"""Tables and verdict rows of the real-model optimizer x method grid.

Per cell (teacher arm, method, optimizer, lr): the paired difference of mean log P(animal)
(teacher-numbers student minus the base-numbers student of the same seed, method, optimizer and
lr) with a two-sided 95% Student-t interval over seeds (``harness.records.mean_interval``), how
many seeds are positive, and the smallest paired difference the seeds could detect (80% power,
5% level: ``real_numbers.report.detectable_effect``); the share of sampled answers naming the
animal pooled over seeds with Wilson's 95% interval for each student, and their difference with
Newcombe's hybrid score interval (Newcombe 1998, method 10).

With soft labels (``labels = "teacher"``) the control of a teacher arm is the student of the other
animal's teacher (same seed, pairs, batches and LoRA init), and the lr criterion averages the
held-out distillation loss over both arms' students.

A cell "transfers" when its log P difference has at least 2 seeds and a 95% interval above 0.
The verdict on Blank et al. counts only if the Adam arm itself transfers; otherwise it reads
"no transfer with Adam either at this size: not informative". The same rule gates Nief et al.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from sublim_theory.harness.records import interval_text, mean_interval, restore_nan
from sublim_theory.harness.runs import atomic_write_csv, atomic_write_text
from sublim_theory.studies.real_grid.experiment import COLUMNS, RealGridConfig, Unit, arm_animal
from sublim_theory.studies.real_numbers.report import detectable_effect
from sublim_theory.testbeds.real_lm.statistics import newcombe_difference, wilson_interval

__all__ = [
    "BLANK",
    "NIEF",
    "Cell",
    "cells",
    "format_tables",
    "format_timings",
    "make_report",
    "tuned_lrs",
]

BLANK = "Blank et al., arXiv 2606.00995"
NIEF = "Nief et al., arXiv 2606.00831"
TIMINGS = ("unit_seconds", "train_seconds")


def _value(row: dict) -> float:
    value = restore_nan(row["value"])
    return math.nan if value is None else float(value)


def _table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(map(str, line)) + " |" for line in lines]
    return "\n".join(out)


def _student_values(rows: Sequence[dict]) -> dict[tuple, float]:
    """(arm, method, optimizer, lr, seed, animal, metric) -> value, and n for hits."""
    values = {}
    for r in rows:
        key = (r["arm"], r["method"], r["optimizer"], float(r["lr"]), int(r["seed"]))
        values[(*key, r["animal"], r["metric"])] = _value(r)
        if r["metric"] == "hits":
            values[(*key, r["animal"], "answers")] = float(r["n"])
    return values


def tuned_lrs(rows: Sequence[dict], config: RealGridConfig) -> dict[tuple[str, str], dict]:
    """Per (method, optimizer): the mean held-out loss of the control students per lr, the pick.

    Returns:
        ``{(method, optimizer): {"losses": {lr: (mean, seeds)}, "lr": the tuned lr or None}}``;
        the pick needs every lr of the grid stored for the same number of seeds.

    """
    held = defaultdict(lambda: defaultdict(list))
    criterion = set(config.arms) if config.soft else {"base"}
    for r in rows:
        if r["metric"] == "heldout_loss" and r["arm"] in criterion:
            loss = _value(r)
            held[(r["method"], r["optimizer"])][float(r["lr"])].append(
                loss if math.isfinite(loss) else math.inf
            )
    picks = {}
    for (method, optimizer), by_lr in held.items():
        grid = config.lrs[f"{optimizer}_{'full' if method == 'full' else 'lora'}"]
        losses = {lr: (sum(v) / len(v), len(v)) for lr, v in sorted(by_lr.items())}
        # a pick compares like with like: every grid lr, each over the same number of seeds
        complete = all(float(lr) in losses for lr in grid)
        complete = complete and len({n for _, n in losses.values()}) == 1
        pick = min(losses, key=lambda lr: (losses[lr][0], lr)) if complete else None
        picks[(method, optimizer)] = {"losses": losses, "lr": pick}
    return picks


class Cell:
    """One (teacher arm, method, optimizer, lr) cell against its paired controls."""

    def __init__(
        self,
        values: dict,
        arm: str,
        method: str,
        optimizer: str,
        lr: float,
        control: str = "base",
    ) -> None:
        """Collect the cell's seeds from ``values`` (``_student_values``) against ``control``."""
        self.arm, self.method, self.optimizer, self.lr = arm, method, optimizer, lr
        self.control = control
        self.animal = arm_animal(arm)
        seeds = sorted(
            {k[4] for k in values if k[:4] == (arm, method, optimizer, lr) and k[6] == "logp"}
        )
        self.paired = []  # (seed, teacher logp - control logp)
        self.hits = [0, 0, 0, 0]  # teacher hits, answers; control hits, answers
        for seed in seeds:
            teacher = values.get((arm, method, optimizer, lr, seed, self.animal, "logp"))
            paired = values.get((control, method, optimizer, lr, seed, self.animal, "logp"))
            if teacher is None or paired is None:
                continue
            self.paired.append((seed, teacher - paired))
            shares = [
                values.get((a, method, optimizer, lr, seed, self.animal, m))
                for a in (arm, control)
                for m in ("hits", "answers")
            ]
            if None not in shares:
                self.hits = [h + round(s) for h, s in zip(self.hits, shares)]
        finite = [d for _, d in self.paired if math.isfinite(d)]
        self.mean, self.half, self.n = mean_interval(finite)
        self.diverged = len(self.paired) - len(finite)

    @property
    def transfers(self) -> bool:
        """A log P difference with >= 2 seeds and a 95% interval above 0."""
        return self.n >= 2 and self.mean - self.half > 0

    @property
    def below(self) -> bool:
        """A log P difference with a 95% interval below 0."""
        return self.n >= 2 and self.mean + self.half < 0

    def diff_text(self) -> str:
        """``mean [low, high]`` or ``mean`` (one seed), ``-`` with none."""
        return "-" if self.n == 0 else interval_text(self.mean, self.half)

    def positive(self) -> str:
        """Seeds with a positive paired difference, over seeds."""
        finite = [d for _, d in self.paired if math.isfinite(d)]
        return f"{sum(d > 0 for d in finite)}/{len(finite)}"

    def detectable(self) -> str:
        """The paired effect these seeds would detect (80% power, 5% level)."""
        if self.n < 2 or not self.half > 0:
            return ""
        return f"{detectable_effect(self.half, self.n):.3f}"

    def shares(self) -> tuple[str, str, str]:
        """(teacher share [Wilson], control share [Wilson], difference [Newcombe])."""
        th, ta, ch, ca = self.hits
        if ta == 0 or ca == 0:
            return "-", "-", "-"
        texts = []
        for hits, total in ((th, ta), (ch, ca)):
            low, high = wilson_interval(hits, total)
            texts.append(f"{hits / total:.3f} [{low:.3f}, {high:.3f}] ({hits}/{total})")
        d, low, high = newcombe_difference(th, ta, ch, ca)
        return texts[0], texts[1], f"{d:+.3f} [{low:+.3f}, {high:+.3f}]"


def cells(rows: Sequence[dict], config: RealGridConfig, units: Sequence[Unit]) -> list[Cell]:
    """Every planned teacher cell with at least one paired seed, in plan order.

    Returns:
        The cells.

    """
    values = _student_values(rows)
    seen, out = set(), []
    for u in units:
        key = (u.arm, u.method, u.optimizer, u.lr)
        if u.arm == "base" or key in seen:
            continue
        seen.add(key)
        cell = Cell(values, *key, control=config.control(u.arm))
        if cell.paired:
            out.append(cell)
    return out


def _cell_line(cell: Cell, tuned: bool) -> list[object]:
    return [
        cell.arm, cell.method, cell.optimizer, f"{cell.lr:g}" + (" (tuned)" if tuned else ""),
        cell.diff_text(), cell.positive(), cell.detectable(), *cell.shares(),
    ]  # fmt: skip


CELL_HEADER = [
    "teacher arm", "method", "optimizer", "lr", "log P diff [95% t]", "seeds > 0",
    "detectable", "share, teacher-numbers student [Wilson]", "share, control [Wilson]",
    "share diff [Newcombe]",
]  # fmt: skip


def _scope(config: RealGridConfig, rows: Sequence[dict], seeds: int) -> str:
    examples = sorted({round(_value(r)) for r in rows if r["metric"] == "examples"})
    n_text = "/".join(map(str, examples)) if examples else "?"
    grids = "; ".join(f"{k} {list(v)}" for k, v in sorted(config.lrs.items()))
    model = (
        "SmolLM2-135M-Instruct (hidden width 576)"
        if config.model == "smollm2-135m-instruct"
        else f"the model {config.model} (NOT SmolLM2-135M-Instruct: a test or local model)"
    )
    if config.soft:
        return (
            f"{model}, SOFT LABELS: {n_text} of the base's own number completions per seed, "
            "labelled by each teacher's next-token probabilities (the distillation loss of "
            "Cloud et al.'s Theorem 1, not sampled tokens), "
            f"{config.steps} steps of batch {config.batch}, {seeds} seed(s); control: the "
            "student of the other animal's teacher; lr per (method, optimizer) by the held-out "
            f"distillation loss (never the trait) from the grids {grids}, and every grid lr as "
            "a fixed lr"
        )
    return (
        f"{model}, {n_text} training completions"
        f" per arm and seed, {config.steps} steps of batch {config.batch}, {seeds} seed(s); lr "
        "per (method, optimizer) by the control students' held-out loss on base numbers (never "
        f"the trait) from the grids {grids}, and every grid lr as a fixed lr"
    )


SOFT_SCOPE = (
    " Their students fine-tune on SAMPLED tokens of the teacher's outputs; ours here learn the "
    "teachers' probabilities on numbers no teacher wrote, so this row does not test their "
    "setting: it asks whether, on a real 135M chat model, the {axis} decides if the trait "
    "signal that soft labels carry moves the student."
)


def _verdicts(
    tuned_cells: Sequence[Cell],
    all_cells: Sequence[Cell],
    scope: str,
    methods: Sequence[str],
    soft: bool = False,
) -> list[str]:
    system = [c for c in tuned_cells if c.arm.startswith("system-")]
    # a soft-label verdict names its loss: it is never a verdict on sampled-token fine-tuning
    tag = " (soft labels: does not test their sampled-token setting)" if soft else ""
    lines = ["", "## Verdicts", ""]
    # --- Blank et al.
    lines += [
        f"**Adaptive optimizers are necessary for transfer in language models** ({BLANK}; "
        "system-prompted teachers, outlier gradients that per-coordinate normalisation handles).",
        "",
        "Scope. Theirs: pretrained instruct LLMs with system-prompted teachers; Adam against "
        "non-adaptive optimizers (model sizes, data sizes and lrs as in the paper: not recorded "
        f"here). Ours: {scope}. Same kind of teacher (system prompt) and student (a pretrained "
        "chat LM trained without the prompt); where their models or data are larger this row "
        "does not test their setting: it speaks for 135M and this data size only. SignSGD "
        "normalises each coordinate (the mechanism they name), so its cells are shown but not "
        "counted against them." + (SOFT_SCOPE.format(axis="optimizer") if soft else ""),
        "",
    ]
    verdict_rows = []
    system_arms = list(dict.fromkeys(c.arm for c in all_cells if c.arm.startswith("system-")))
    for arm, method in [(a, m) for a in system_arms for m in methods]:
        by_opt = {c.optimizer: c for c in system if c.method == method and c.arm == arm}
        adam, sgd = by_opt.get("adam"), by_opt.get("sgd")
        if adam is None or sgd is None:
            verdict = "not run yet"
        elif not adam.transfers:
            verdict = "no transfer with Adam either at this size: not informative"
        elif sgd.transfers:
            verdict = "disagrees at this scale: plain SGD transfers too"
        else:
            verdict = "consistent with the claim at this scale: Adam transfers, SGD not detectably"
        verdict += tag if adam is not None and sgd is not None else ""
        texts = [
            "-" if c is None else f"{c.diff_text()} (lr {c.lr:g})"
            for c in (adam, sgd, by_opt.get("signsgd"))
        ]
        verdict_rows.append([method, arm, *texts, verdict])
    lines += [
        _table(
            ["method", "teacher", "Adam log P diff", "SGD", "SignSGD (not counted)", "verdict"],
            verdict_rows,
        )
    ]
    # --- Nief et al.
    lines += [
        "",
        f"**No transfer under full fine-tuning; an inverted U in LoRA rank** ({NIEF}).",
        "",
        "Scope. Theirs: pretrained LLMs, LoRA ranks far below the adapted layers' width, and full "
        f"fine-tuning (sizes and lrs as in the paper: not recorded here). Ours: {scope}; "
        "optimizer Adam; every LoRA rank here is below the 576-wide layers (genuinely low rank). "
        "Where their models or data are larger this row does not test their setting. The rank "
        "curve is read at each fixed Adam lr (the same lr for every rank) and at the tuned lrs "
        "(where the lr may change with the rank, so shape and lr are not separated). Rule: it "
        "counts only where Adam transfers at some rank."
        + (SOFT_SCOPE.format(axis="LoRA rank or full fine-tuning") if soft else ""),
        "",
    ]
    nief_rows = []
    lora_methods = [m for m in methods if m != "full"]
    for arm in system_arms:
        nief_rows += _nief_rows(arm, tuned_cells, all_cells, lora_methods, tag)
    lines += [
        _table(
            [
                "teacher",
                "Adam lr",
                "LoRA log P diff by rank",
                "concavity [95% t]",
                "full FT",
                "verdict",
            ],
            nief_rows,
        ),  # fmt: skip
        "",
        "concavity: per seed, the mean paired difference of the interior ranks minus the mean of "
        "the smallest and largest rank, a t-interval over seeds (> 0: an inverted U).",
    ]
    return lines


def _nief_rows(
    arm: str,
    tuned_cells: Sequence[Cell],
    all_cells: Sequence[Cell],
    lora_methods: list[str],
    tag: str = "",
) -> list[list[object]]:
    adam_arm = [c for c in all_cells if c.arm == arm and c.optimizer == "adam"]
    any_transfer = any(c.transfers for c in adam_arm)
    rows = []
    lrs = sorted({c.lr for c in adam_arm if c.method in lora_methods})
    for label, pick in [("tuned", None), *[(f"fixed {lr:g}", lr) for lr in lrs]]:
        source = [c for c in tuned_cells if c.arm == arm and c.optimizer == "adam"]
        if pick is not None:
            source = [c for c in adam_arm if c.lr == pick]
        by_method = {c.method: c for c in source}
        curve = ", ".join(f"{m} {by_method[m].mean:+.3f}" for m in lora_methods if m in by_method)
        concavity = _concavity([by_method.get(m) for m in lora_methods])
        full = by_method.get("full")
        if not any_transfer:
            verdict = "no transfer with Adam either at this size: not informative" + tag
        else:
            parts = []
            if full is not None:
                parts.append(
                    "full FT transfers: disagrees with 'no transfer under full FT'"
                    if full.transfers
                    else "full FT: no detectable transfer (agrees)"
                )
            if concavity is not None:
                mean, half, n = concavity
                if n >= 2 and mean - half > 0:
                    parts.append("interior ranks above the ends: an inverted U (agrees)")
                elif n >= 2 and mean + half < 0:
                    parts.append("interior ranks below the ends: not an inverted U (disagrees)")
                else:
                    parts.append("no detectable curvature in rank")
            verdict = "; ".join(parts) + tag if parts else "not run yet"
        rows.append(
            [
                arm,
                label,
                curve or "-",
                "-" if concavity is None else interval_text(*concavity[:2]),
                "-" if full is None else full.diff_text(),
                verdict,
            ]  # fmt: skip
        )
    return rows


def _concavity(cells_by_rank: Sequence[Cell | None]) -> tuple[float, float, int] | None:
    present = [c for c in cells_by_rank if c is not None]
    if len(present) < 3 or len(present) != len(cells_by_rank):
        return None
    per_seed = [dict(c.paired) for c in present]
    seeds = set.intersection(*(set(p) for p in per_seed))
    values = []
    for seed in sorted(seeds):
        d = [p[seed] for p in per_seed]
        values.append(sum(d[1:-1]) / len(d[1:-1]) - (d[0] + d[-1]) / 2)
    return mean_interval(values)


def _pooled_section(all_cells: Sequence[Cell], tuned: Sequence[Cell]) -> list[str]:
    """Soft labels: both teachers' paired differences pooled per seed (the 2 x 2 interaction).

    Per (method, optimizer, lr) and seed: the mean of the two arms' paired differences, i.e.
    half of [log P_a(student_a) - log P_a(student_b)] + [log P_b(student_b) - log P_b(student_a)];
    a shift common to both students (any system-prompted teacher's numbers) cancels.

    Returns:
        The section's markdown lines.

    """
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in all_cells:
        groups[(cell.method, cell.optimizer, cell.lr)].append(cell)
    lines = []
    for (method, optimizer, lr), pair in groups.items():
        if len(pair) != 2:
            continue
        first, second = (dict(c.paired) for c in pair)
        values = [(first[s] + second[s]) / 2 for s in sorted(set(first) & set(second))]
        mean, half, n = mean_interval(values)
        finite = [v for v in values if math.isfinite(v)]
        tuned_mark = " (tuned)" if pair[0] in tuned else ""
        lines.append(
            [method, optimizer, f"{lr:g}{tuned_mark}",
             "-" if n == 0 else interval_text(mean, half),
             f"{sum(v > 0 for v in finite)}/{len(finite)}",
             "" if n < 2 or not half > 0 else f"{detectable_effect(half, n):.3f}"]
        )  # fmt: skip
    return [
        "## Both teachers pooled (a secondary statistic, added after the first cell was read)",
        "",
        "Per seed, the mean of the two arms' paired differences: half of [log P_a(a's student) "
        "- log P_a(b's student)] + [log P_b(b's student) - log P_b(a's student)], the 2 x 2 "
        "interaction of teacher and measured animal; a shift both students share cancels. The "
        "verdicts below use the per-arm cells only (the rule stated before the run).",
        "",
        _table(
            ["method", "optimizer", "lr", "pooled diff [95% t]", "seeds > 0", "detectable"], lines
        ),
    ]


def format_tables(
    rows: Sequence[dict], config: RealGridConfig, units: Sequence[Unit], seeds: int
) -> str:
    """The markdown report of every stored student.

    Returns:
        The markdown text.

    """
    picks = tuned_lrs(rows, config)
    all_cells = cells(rows, config, units)
    tuned = [c for c in all_cells if picks.get((c.method, c.optimizer), {}).get("lr") == c.lr]
    scope = _scope(config, rows, seeds)
    sections = [
        "# Optimizers and LoRA ranks on a real chat LM: students on the stored number completions",
        "",
        f"Scope: {scope}. Students train WITHOUT the system prompt; the control of each "
        + (
            "teacher's student is the student of the other animal's teacher of the same seed, "
            "method, optimizer and lr (same numbers, batch indices and LoRA init)."
            if config.soft
            else "teacher-numbers student is the student of the same seed, method, optimizer "
            "and lr trained on the base's numbers (same batch indices, same LoRA init)."
        ),
        "",
        "## Learning rate per (method, optimizer): held-out loss of the "
        + ("students (both arms)" if config.soft else "control students"),
        "",
        "Mean over seeds of the "
        + ("distillation loss to the student's own teacher" if config.soft else "completion loss")
        + " on held-out base numbers after training (never the trait); the tuned lr is the one "
        "with the smallest loss.",
        "",
    ]
    lines = []
    for (method, optimizer), pick in picks.items():
        losses = ", ".join(f"{lr:g}: {mean:.4f} ({n})" for lr, (mean, n) in pick["losses"].items())
        chosen = "-" if pick["lr"] is None else f"{pick['lr']:g}"
        grid = sorted(pick["losses"])
        if pick["lr"] is not None and len(grid) > 1 and pick["lr"] in (grid[0], grid[-1]):
            chosen += " (edge of the grid: widen it)"
        lines.append([method, optimizer, losses, chosen])
    sections += [_table(["method", "optimizer", "lr: loss (seeds)", "tuned lr"], lines)]
    sections += [
        "",
        "## Every cell (fixed lrs)",
        "",
        "log P diff: mean log P(animal) over the evaluation questions, teacher-numbers student "
        "minus control, paired by seed, 95% t-interval over seeds; detectable: the smallest "
        "paired difference these seeds detect (80% power, 5% level); shares pooled over seeds.",
        "",
        _table(CELL_HEADER, [_cell_line(c, c in tuned) for c in all_cells]),
        "",
        "## At the tuned lr",
        "",
        _table(CELL_HEADER, [_cell_line(c, True) for c in tuned]),
    ]
    if config.soft:
        sections += ["", *_pooled_section(all_cells, tuned)]
    diverged = sum(c.diverged for c in all_cells)
    if diverged:
        sections += ["", f"{diverged} paired seed(s) diverged (non-finite log P): left out."]
    methods = list(dict.fromkeys(u.method for u in units))
    sections += _verdicts(tuned, all_cells, scope, methods, config.soft)
    return "\n".join(sections) + "\n"


def format_timings(rows: Sequence[dict], units: Sequence[Unit]) -> str:
    """Wall time per (method, optimizer) and the cost estimate of the units not yet run.

    Returns:
        The markdown table.

    """
    done = defaultdict(list)
    for r in rows:
        if r["metric"] == "unit_seconds":
            done[(r["method"], r["optimizer"])].append(_value(r))
    stored = {r["unit"] for r in rows}
    planned = defaultdict(int)
    for u in units:
        if u.key not in stored:
            planned[(u.method, u.optimizer)] += 1
    lines, left = [], 0.0
    for key in dict.fromkeys([(u.method, u.optimizer) for u in units]):
        seconds = done.get(key, [])
        mean = sum(seconds) / len(seconds) if seconds else math.nan
        estimate = mean * planned[key]
        left += 0.0 if math.isnan(estimate) else estimate
        lines.append(
            [*key, len(seconds), "-" if not seconds else f"{mean:.1f}", planned[key],
             "-" if math.isnan(estimate) else f"{estimate:.0f}"]
        )  # fmt: skip
    return (
        "# Wall time per student (seconds, this machine; see environment.json)\n\n"
        + _table(
            ["method", "optimizer", "units done", "mean s/unit", "units left", "est. s"], lines
        )
        + f"\n\nEstimated time for the units left (where a mean exists): {left:.0f} s "
        f"({left / 3600:.2f} h).\n"
    )


def make_report(config: RealGridConfig, units: Sequence[Unit], seeds: int):
    """The study's report function: ``report(out, rows) -> text``.

    Writes ``results.csv`` (tidy rows), ``table.md`` (without wall times, so a rerun reproduces
    it) and ``timings.md`` (wall time per unit and the cost estimate of the rest).

    Returns:
        The report function.

    """

    def report(out: Path, rows: list[dict]) -> str:
        atomic_write_csv(out / "results.csv", rows, list(COLUMNS))
        text = format_tables([r for r in rows if r["metric"] not in TIMINGS], config, units, seeds)
        atomic_write_text(out / "table.md", text)
        atomic_write_text(out / "timings.md", format_timings(rows, units))
        return text

    return report
