"""Tables of the real-model screen: ``table.md`` and its CSVs, from the stored per-document rows.

Data sets. Every completions file is a full data set (``full``); each is also split into its
even- and odd-numbered documents (``even``, ``odd``: disjoint halves, so the null has twice as
many draws; the halves of one file share its prompts' seed and are not independent).

Reference. Data set D (teacher or null) is compared with the base documents of every OTHER seed
(never D's own seed, so a base data set is never compared with itself, and teacher and null data
sets are treated alike: the calibration below is fair). Per animal a: the mean push with its
95% bootstrap interval, z = mean / SE over D's documents and z_c (z centred over the animals:
the per-example spread), Welch's t of D's minus the reference's pushes and t_c (centred over the
animals); the ranking is by t_c. The data set's max-t permutation p
(:func:`sublim_theory.studies.screen_data.trait_statistics`): S = max_a t_c, p = the share of
relabellings of D's and the reference's documents with an S at least as large.

Detection, per teacher animal A: the teacher data sets of A against the null data sets (the base's
own), scored by t_c(A): top-1 and top-3 counts with Wilson 95% intervals; per teacher data set
an empirical p = (1 + #{null data sets with t_c(A) >= its}) / (1 + #null data sets); AUROC of
t_c(A) teacher vs null with DeLong's 95% interval, and the same AUROC for the direction-free
confounds alone (mean completion length in tokens, mean base loss, mean per-document gradient
norm: each data set's mean). The null data sets' false-alarm rate: the share with max-t p < 0.05.

Forecast vs student: per full data set with a LoRA student in the numbers folder's
``results.csv``, the forecast (the mean push: Delta m_a per unit learning rate of one SGD step)
beside the student's measured Delta log P(a) (its mean log P minus the base's, the ``reference``
unit), per animal measured there; Pearson's r over the data sets with Fisher's 95% interval
(n >= 4).
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sublim_theory.harness.runs import atomic_write_csv, atomic_write_text
from sublim_theory.studies.real_screen.experiment import teacher_animal
from sublim_theory.studies.screen_data import trait_statistics
from sublim_theory.testbeds.real_lm.statistics import auroc_interval, wilson_interval

__all__ = ["CONFOUNDS", "data_sets", "make_report", "pearson_interval", "student_changes"]

CONFOUNDS = ("tokens", "base_loss", "grad_norm")
SPLITS = ("full", "even", "odd")
PAPER = "Cloud et al. 2025, Subliminal Learning, arXiv 2507.14805, Section 3"


def pearson_interval(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, int]:
    """Pearson's r with Fisher's 95% interval (NaN ends for n < 4).

    Returns:
        (r, low, high, n).

    """
    a, b = np.asarray(x, float), np.asarray(y, float)
    n = int(a.size)
    if n < 3 or a.std() == 0 or b.std() == 0:
        return math.nan, math.nan, math.nan, n
    r = float(np.corrcoef(a, b)[0, 1])
    if n < 4 or abs(r) >= 1:
        return r, math.nan, math.nan, n
    z, half = math.atanh(r), 1.959963984540054 / math.sqrt(n - 3)
    return r, math.tanh(z - half), math.tanh(z + half), n


def data_sets(rows: Sequence[dict]) -> tuple[list[str], dict, dict]:
    """The stored rows as arrays.

    Returns:
        (animals, sets, seconds): ``sets[(arm, seed, split)]`` = dict of ``push`` (n, K) and each
        confound (n,); ``seconds[unit]`` = its wall times.

    """
    animals: list[str] = []
    per_unit: dict = defaultdict(lambda: defaultdict(dict))
    seconds: dict = defaultdict(dict)
    keys = {}
    for row in rows:
        unit, metric = row["unit"], row["metric"]
        keys[unit] = (row["arm"], int(row["seed"]))
        if metric.endswith("_seconds"):
            seconds[unit][metric] = float(row["value"])
            continue
        if metric == "push" and row["animal"] not in animals:
            animals.append(row["animal"])
        name = f"push:{row['animal']}" if metric == "push" else metric
        per_unit[unit][int(row["document"])][name] = float(row["value"])
    sets = {}
    for unit, documents in per_unit.items():
        order = sorted(documents)
        push = np.array([[documents[i][f"push:{a}"] for a in animals] for i in order])
        full = {"push": push} | {c: np.array([documents[i][c] for i in order]) for c in CONFOUNDS}
        arm, seed = keys[unit]
        sets[(arm, seed, "full")] = full
        sets[(arm, seed, "even")] = {k: v[0::2] for k, v in full.items()}
        sets[(arm, seed, "odd")] = {k: v[1::2] for k, v in full.items()}
    return animals, sets, dict(seconds)


def student_changes(numbers: Path) -> tuple[dict, str]:
    """The LoRA students' measured Delta log P(a) from ``numbers/results.csv``.

    Returns:
        ({(arm, seed, animal): student log P - base log P}, the file's SHA-256 (12 hex) or a
        note that it is missing).

    """
    path = Path(numbers) / "results.csv"
    if not path.exists():
        return {}, "missing"
    text = path.read_text()
    base, student = {}, {}
    for row in csv.DictReader(text.splitlines()):
        if row["metric"] != "logp":
            continue
        if row["unit"] == "reference" and row["arm"] == "base":
            base[row["animal"]] = float(row["value"])
        elif row["unit"].startswith("student-") and row["method"] == "lora":
            student[(row["arm"], int(row["seed"]), row["animal"])] = float(row["value"])
    changes = {k: v - base[k[2]] for k, v in student.items() if k[2] in base}
    return changes, hashlib.sha256(text.encode()).hexdigest()[:12]


def _statistics(animals, sets, bootstrap, permutations):
    """Per data set, ``trait_statistics`` against the base documents of the other seeds."""
    out = {}
    for key in sorted(sets, key=lambda k: (k[0] != "base", k[0], k[1], SPLITS.index(k[2]))):
        arm, seed, _ = key
        others = [
            v["push"]
            for (a, s, sp), v in sets.items()
            if a == "base" and s != seed and sp == "full"
        ]
        if not others:
            continue
        reference = torch.from_numpy(np.concatenate(others))
        ranked, dataset = trait_statistics(
            torch.from_numpy(sets[key]["push"]),
            reference,
            animals,
            bootstrap=bootstrap,
            permutations=permutations,
            seed=seed,
        )
        out[key] = (ranked, dataset, reference.shape[0])
    return out


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def _auroc(scores, labels) -> str:
    if sum(labels) < 2 or len(labels) - sum(labels) < 2:
        return "n/a (fewer than 2 of a class)"
    result = auroc_interval(scores, labels)
    return f"{result.auroc:.2f} [{result.low:.2f}, {result.high:.2f}]"


def make_report(numbers: Path, bootstrap: int, permutations: int, model: str = ""):
    """The ``report(out, rows)`` of the study (reads the students from ``numbers``).

    Returns:
        The report function.

    """

    def report(out: Path, rows: list[dict]) -> str:
        return _report(Path(out), rows, Path(numbers), bootstrap, permutations, model)

    return report


def _report(out: Path, rows, numbers: Path, bootstrap: int, permutations: int, model: str) -> str:
    animals, sets, seconds = data_sets(rows)
    stats = _statistics(animals, sets, bootstrap, permutations)
    changes, csv_digest = student_changes(numbers)
    per_set, per_animal = [], []
    for (arm, seed, split), (ranked, dataset, n_ref) in stats.items():
        target = teacher_animal(arm)
        by_name = {r["trait"]: r for r in ranked}
        data = sets[(arm, seed, split)]
        record = {
            "arm": arm,
            "seed": seed,
            "split": split,
            "documents": data["push"].shape[0],
            "reference_documents": n_ref,
            "teacher_animal": target or "",
            "ranking": " ".join(r["trait"] for r in ranked),
            "teacher_rank": by_name[target]["rank"] if target in by_name else "",
            "teacher_t_centered": by_name[target]["t_centered"] if target in by_name else "",
            "teacher_z_centered": by_name[target]["z_centered"] if target in by_name else "",
            "top_trait": dataset["trait"],
            "max_t_statistic": dataset["value"],
            "max_t_p": dataset["p"],
        } | {f"mean_{c}": float(data[c].mean()) for c in CONFOUNDS}
        per_set.append(record)
        for r in ranked:
            per_animal.append({"arm": arm, "seed": seed, "split": split} | r)
    fieldnames = list(per_set[0]) if per_set else ["arm"]
    atomic_write_csv(out / "datasets.csv", per_set, fieldnames)
    atomic_write_csv(
        out / "animals.csv", per_animal, list(per_animal[0]) if per_animal else ["arm"]
    )
    _write_attributions(out, animals, sets)

    lines = [
        "# The trait screen on the real number experiment's data sets",
        "",
        f"Base model: {model or 'see run.json'}. Data sets: "
        + ", ".join(
            f"{arm} s{seed} ({v['push'].shape[0]} documents)"
            for (arm, seed, split), v in sets.items()
            if split == "full"
        )
        + ".",
        "",
        f"Data: the kept number completions of the real number experiment ({PAPER}, in miniature):"
        " teacher arms (system-prompted or fine-tuned toward an animal) and the base's own numbers"
        f" on the same prompts (the null). {len(animals)} candidate animals: {', '.join(animals)}.",
        "Push c_ia = <grad m_a, -grad l_i> at the base, exact (no projection): the rise of the mean "
        "log P(animal) over the 24 evaluation questions per unit learning rate of one SGD step on "
        "document i. Each data set is compared with the base documents of the other seeds "
        "(t: Welch's t of data minus reference pushes; t_c: centred over the animals; ranking by "
        "t_c); z_c: mean push over its standard error within the data set, centred; p max-t: "
        f"{permutations} permutations of data and reference documents. Halves: even/odd documents "
        "of each file (not independent of each other).",
        "",
        "## Per data set",
        "",
        "| arm | seed | split | n | teacher animal rank | t_c | z_c | top animal | max-t p | ranking (t_c) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in per_set:
        t = r["teacher_t_centered"]
        z = r["teacher_z_centered"]
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['split']} | {r['documents']} | "
            f"{r['teacher_rank'] or '-'} | {_fmt(t, 3) if t != '' else '-'} | "
            f"{_fmt(z, 3) if z != '' else '-'} | {r['top_trait']} | {_fmt(r['max_t_p'])} | "
            f"{r['ranking']} |"
        )
    lines += _detection(out, per_set, stats, sets)
    lines += _forecast(out, stats, changes, csv_digest)
    lines += _timings(seconds, sets)
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "table.md", text)
    return text


def _detection(out: Path, per_set, stats, sets) -> list[str]:
    lines = ["", "## Detection: teacher data sets vs the base's own (null)", ""]
    rows = []
    targets = sorted({r["teacher_animal"] for r in per_set if r["teacher_animal"]})
    for split_group, splits in (("full", ("full",)), ("halves", ("even", "odd"))):
        nulls = [(k, v) for k, v in stats.items() if k[0] == "base" and k[2] in splits]
        alarms = sum(v[1]["p"] < 0.05 for _, v in nulls)
        if nulls:
            low, high = wilson_interval(alarms, len(nulls))
            lines.append(
                f"- {split_group}: null data sets with max-t p < 0.05: {alarms}/{len(nulls)} "
                f"(Wilson 95% [{low:.2f}, {high:.2f}])"
            )
        for animal in targets:
            teachers = [
                (k, v)
                for k, v in stats.items()
                if teacher_animal(k[0]) == animal and k[2] in splits
            ]
            if not teachers or not nulls:
                continue

            def t_c(value, animal=animal):
                return next(r["t_centered"] for r in value[0] if r["trait"] == animal)

            def rank(value, animal=animal):
                return next(r["rank"] for r in value[0] if r["trait"] == animal)

            null_scores = [t_c(v) for _, v in nulls]
            scores = [t_c(v) for _, v in teachers] + null_scores
            labels = [1] * len(teachers) + [0] * len(nulls)
            top1 = sum(rank(v) == 1 for _, v in teachers)
            top3 = sum(rank(v) <= 3 for _, v in teachers)
            empirical = [
                (1 + sum(s >= t_c(v) for s in null_scores)) / (1 + len(null_scores))
                for _, v in teachers
            ]
            record = {
                "split": split_group,
                "animal": animal,
                "teacher_sets": len(teachers),
                "null_sets": len(nulls),
                "top1": top1,
                "top1_wilson": "[{:.2f}, {:.2f}]".format(*wilson_interval(top1, len(teachers))),
                "top3": top3,
                "top3_wilson": "[{:.2f}, {:.2f}]".format(*wilson_interval(top3, len(teachers))),
                "empirical_p": " ".join(f"{p:.2f}" for p in empirical),
                "auroc_t_centered": _auroc(scores, labels),
            }
            for confound in CONFOUNDS:
                values = [float(sets[k][confound].mean()) for k, _ in teachers + nulls]
                record[f"auroc_{confound}"] = _auroc(values, labels)
            rows.append(record)
    if rows:
        atomic_write_csv(out / "detection.csv", rows, list(rows[0]))
        lines += [
            "",
            "AUROC: teacher (positive) vs null data sets, DeLong 95% interval; > 0.5 means the "
            "teacher sets score higher. Confound columns use each set's mean of the confound "
            "alone (no trait direction). With n this small the DeLong interval is a rough guide.",
            "",
            "| split | animal | teacher / null sets | top-1 [Wilson 95%] | top-3 [Wilson 95%] | "
            "empirical p per teacher set | AUROC t_c(animal) | AUROC length | AUROC base loss | "
            "AUROC grad norm |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            lines.append(
                f"| {r['split']} | {r['animal']} | {r['teacher_sets']} / {r['null_sets']} | "
                f"{r['top1']}/{r['teacher_sets']} {r['top1_wilson']} | "
                f"{r['top3']}/{r['teacher_sets']} {r['top3_wilson']} | {r['empirical_p']} | "
                f"{r['auroc_t_centered']} | {r['auroc_tokens']} | {r['auroc_base_loss']} | "
                f"{r['auroc_grad_norm']} |"
            )
    return lines


def _forecast(out: Path, stats, changes, csv_digest) -> list[str]:
    lines = [
        "",
        "## Forecast vs the real LoRA student",
        "",
        f"Students: the numbers folder's results.csv (sha256 {csv_digest}): LoRA students (Adam) "
        "trained without a system prompt on each full data set; measured Delta log P(animal) = "
        "student's mean log P minus the base's. Forecast: the data set's mean push (one SGD "
        "step, per unit learning rate, all parameters): a different optimizer and parameter "
        "space than the students', so only the sign and the ordering can be compared.",
        "",
    ]
    pairs = defaultdict(list)
    rows = []
    for (arm, seed, split), (ranked, _, _) in stats.items():
        if split != "full":
            continue
        for r in ranked:
            change = changes.get((arm, seed, r["trait"]))
            if change is None:
                continue
            pairs[r["trait"]].append((r["mean_push"], change))
            rows.append(
                {"arm": arm, "seed": seed, "animal": r["trait"], "forecast_mean_push": r["mean_push"],
                 "measured_delta_logp": change}
            )  # fmt: skip
    if not rows:
        return [*lines, "No LoRA student of these data sets in results.csv."]
    lines += [
        "| arm | seed | animal | forecast (mean push) | measured Delta log P |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['animal']} | {r['forecast_mean_push']:.4g} | "
            f"{r['measured_delta_logp']:+.3f} |"
        )
    lines.append("")
    for animal, values in sorted(pairs.items()):
        r, low, high, n = pearson_interval(*zip(*values))
        interval = f"[{low:.2f}, {high:.2f}]" if math.isfinite(low) else "(no interval: n < 4)"
        lines.append(
            f"- {animal}: Pearson r between forecast and measured change over n = {n} data sets: "
            f"{_fmt(r, 2)} {interval} (Fisher 95%); n is small, so this says little either way."
        )
    atomic_write_csv(out / "forecast_vs_student.csv", rows, list(rows[0]))
    return lines


def _timings(seconds, sets) -> list[str]:
    lines = [
        "",
        "## Wall time (one CPU thread)",
        "",
        "| data set | documents | scoring s | s per document |",
        "| --- | --- | --- | --- |",
    ]
    directions = sum(v.get("direction_seconds", 0.0) for v in seconds.values())
    for unit, v in seconds.items():
        arm, _, seed = unit.removeprefix("pushes-").rpartition("-s")
        n = sets[(arm, int(seed), "full")]["push"].shape[0]
        lines.append(
            f"| {arm} s{seed} | {n} | {v['score_seconds']:.1f} | {v['score_seconds'] / n:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Animal gradients (once per process, all animals): {directions:.1f} s in total over the "
        "run's processes."
    )
    return lines


def _write_attributions(out: Path, animals, sets) -> None:
    """``attributions.csv``: every document's push toward every animal, and its confounds."""
    rows = []
    for (arm, seed, split), data in sorted(sets.items()):
        if split != "full":
            continue
        for i in range(data["push"].shape[0]):
            cells = {a: repr(float(v)) for a, v in zip(animals, data["push"][i])}
            rows.append({"arm": arm, "seed": seed, "document": i} | cells
                        | {c: repr(float(data[c][i])) for c in CONFOUNDS})  # fmt: skip
    atomic_write_csv(
        out / "attributions.csv", rows, ["arm", "seed", "document", *animals, *CONFOUNDS]
    )
