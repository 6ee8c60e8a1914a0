"""The benchmark table: targets met or not over every run, combined runs, Markdown."""

from __future__ import annotations

import json
import resource
from typing import Any

__all__ = [
    "TARGETS",
    "combine_runs",
    "markdown",
    "real_markdown",
    "verdicts",
]

# Each path's target as a ratio to one student gradient (issue 15): (relation, bound).
TARGETS = {
    # issue 23: the real model (studies.bench.real), per gradient and against plain code
    "real_first_order": ("<=", 1.3),
    "real_gauss_newton": ("<=", 2.0),
    "real_first_order_public": ("<=", 1.3),
    "real_gauss_newton_public": ("<=", 2.0),
    "real_train_ours": ("<=", 1.0),
    "real_generate_ours": ("<=", 1.0),
    "report": ("<=", 4.0),
    "first_order": ("<=", 1.2),
    "gauss_newton": ("<=", 1.8),
    "gauss_newton_vs_curvlinops": ("<=", 0.75),
    "seeds_loop_over_vmap": (">=", 3.0),
    "mnist_step_batched": ("<=", 1.0),
    # issue 23: the screen in one-epoch equivalents (ratio to one training epoch)
    "screen_factored[10]": ("<=", 1.5),
    "screen_factored[100]": ("<=", 2.5),
}


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each targeted row with its target and whether it was met."""
    out = []
    for row in rows:
        target = TARGETS.get(row["path"])
        if target is None:
            continue
        op, bound = target
        met = row["ratio"] <= bound if op == "<=" else row["ratio"] >= bound
        out.append({**row, "target": f"{op} {bound}", "met": bool(met)})
    return out


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["arch"], row["dtype"], row["path"], row["batch"])


def combine_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per measurement with its ratios over the runs and the verdict over all of them.

    ``met`` is "yes" when every run meets the target, "NO" when none does, and "mixed (k/n)"
    otherwise; untargeted entries have no verdict.
    """
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        entry = grouped.setdefault(
            _key(row), {**row, "seconds": [], "ratio": [], "load": [], "met_runs": []}
        )
        entry["seconds"].append(row["seconds"])
        entry["ratio"].append(row["ratio"])
        entry["load"].append(row.get("load"))
    out = []
    for entry in grouped.values():
        target = TARGETS.get(entry["path"])
        entry["target"], entry["met"] = "", ""
        if target is not None:
            marks = [v["met"] for v in verdicts([{**entry, "ratio": r} for r in entry["ratio"]])]
            entry["target"] = f"{target[0]} {target[1]}"
            met, n = sum(marks), len(marks)
            entry["met"] = "yes" if met == n else "NO" if met == 0 else f"mixed ({met}/{n})"
        del entry["met_runs"]
        entry.pop("run", None)
        out.append(entry)
    return out


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    combined = combine_runs(rows)
    runs = max((len(entry["ratio"]) for entry in combined), default=0)
    lines = [
        "# Benchmark: cost of alignment measurement relative to one student gradient",
        "",
        f"Environment: {json.dumps(env)}",
        "",
        f"{runs} run(s), one after the other; per run: seconds (median, round-robin) and the "
        "ratio to the baseline in that run; `met` over all runs; `load` is the 1-minute load "
        "average at the start of the case in each run.",
        "",
        "| arch | dtype | device | params | batch | path | seconds | ratio | baseline | target "
        "| met | load |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- | --- | --- | ---: |",
    ]

    def joined(values: list[Any], spec: str) -> str:
        return " / ".join("-" if x is None else format(x, spec) for x in values)

    for r in combined:
        lines.append(
            f"| {r['arch']} | {r['dtype']} | {r['device']} | {r['num_params']} | {r['batch']} | "
            f"{r['path']} | {joined(r['seconds'], '.4g')} | {joined(r['ratio'], '.3f')} | "
            f"{r['baseline']} | {r['target']} | {r['met']} | {joined(r['load'], '.2f')} |"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", f"Peak process RSS over the whole run: {rss:.0f} MiB."]
    return "\n".join(lines) + "\n"


def real_markdown(rows: list[dict[str, Any]], env: dict[str, Any], setup: dict[str, Any]) -> str:
    """The real-model table: per run seconds and ratio, the verdict over all runs, the checks.

    Returns:
        The Markdown text.

    """
    combined = combine_runs(rows)
    checks: dict[str, list[str]] = {}
    for row in rows:
        if row.get("check") is not None:
            checks.setdefault(row["path"], []).append(row["check"])
    runs = max((len(entry["ratio"]) for entry in combined), default=0)
    lines = [
        "# Benchmark: the real model's costs (engine paths per gradient; ours vs plain code)",
        "",
        f"Environment: {json.dumps(env)}",
        "",
        f"Setup: {json.dumps(setup)}",
        "",
        f"{runs} run(s), one after the other; per run: seconds (median, round-robin within the "
        "case) and the ratio to the baseline in that run; `met` over all runs; `load` is the "
        "1-minute load average at the start of the case in each run.",
        "",
        "| case | model | dtype | device | params | batch | path | seconds | ratio | baseline "
        "| target | met | load | check |",
        "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- | --- | --- | ---: "
        "| --- |",
    ]

    def joined(values: list[Any], spec: str) -> str:
        return " / ".join("-" if x is None else format(x, spec) for x in values)

    for r in combined:
        lines.append(
            f"| {r['case']} | {r['arch']} | {r['dtype']} | {r['device']} | {r['num_params']} | "
            f"{r['batch']} | {r['path']} | {joined(r['seconds'], '.4g')} | "
            f"{joined(r['ratio'], '.3f')} | {r['baseline']} | {r['target']} | {r['met']} | "
            f"{joined(r['load'], '.2f')} | {' / '.join(checks.get(r['path'], []))} |"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", f"Peak process RSS over the whole run: {rss:.0f} MiB."]
    return "\n".join(lines) + "\n"
