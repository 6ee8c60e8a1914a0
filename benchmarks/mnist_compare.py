"""Ours (``sublim_theory.studies.mnist.experiment``) against the straightforward baseline, same machine.

Usage (repository root): ``python benchmarks/mnist_compare.py OUT_DIR [--rounds 1] [--ours-first]
[--teacher-epochs 5] [--student-epochs 5] [--noise-images 60000] [--models 10]``.

Each round runs the baseline (``benchmarks/mnist_baseline.py``) and ours in fresh processes, one
after the other (the order alternates between rounds), and records per process the wall time,
user and system CPU time and peak RSS (``os.wait4``), and the 1-minute load average before it.
Targets (issue 15): ours <= 0.8 x the baseline's wall time and <= 0.5 x its peak memory, with the
same per-group mean test accuracy within the 95% interval of the difference (normal
approximation, 1.96 x the standard error of the difference of the two means over models).
Writes OUT_DIR/compare.json and OUT_DIR/compare.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OURS = """
import json, sys, time
from sublim_theory.testbeds.mnist.data import load_mnist
from sublim_theory.studies.mnist.experiment import MnistConfig, run_experiment
out, models, teacher_epochs, student_epochs, noise_images = sys.argv[1:6]
start = time.perf_counter()
config = MnistConfig(models=int(models), teacher_epochs=int(teacher_epochs),
                     student_epochs=int(student_epochs), noise_images=int(noise_images))
result = run_experiment(config, load_mnist())
json.dump({"implementation": "ours (sublim_theory.studies.mnist.experiment)", "teacher": result.teacher,
           "groups": {k: v["accuracy"] for k, v in result.groups.items()},
           "seconds": time.perf_counter() - start}, open(out, "w"), indent=1)
"""


def _run(command: list[str]) -> dict[str, float]:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{command[:3]} failed with status {status}")
    return {
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "load_before": load,
    }


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ours-first", action="store_true", help="run ours first in round 1")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--noise-images", type=int, default=60_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = [str(args.models), str(args.teacher_epochs), str(args.student_epochs)]
    settings.append(str(args.noise_images))
    baseline_script = str(Path(__file__).with_name("mnist_baseline.py"))
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = ["baseline", "ours"] if round_index % 2 == 0 else ["ours", "baseline"]
            order = order[::-1] if args.ours_first else order
            for name in order:
                result_path = os.path.join(scratch, f"{name}-{round_index}.json")
                if name == "ours":
                    command = [sys.executable, "-c", OURS, result_path, *settings]
                else:
                    command = [
                        sys.executable,
                        baseline_script,
                        result_path,
                        "--models",
                        settings[0],
                        "--teacher-epochs",
                        settings[1],
                        "--student-epochs",
                        settings[2],
                        "--noise-images",
                        settings[3],
                    ]
                measured = _run(command)
                with open(result_path) as handle:
                    result = json.load(handle)
                records.append({"name": name, "round": round_index + 1, **measured, **result})
                print(f"{name} round {round_index + 1}: {measured}", file=sys.stderr)

    lines = [
        "# MNIST recipe: ours against the straightforward batched baseline",
        "",
        f"Settings: {args.models} models, {args.teacher_epochs} teacher epochs, "
        f"{args.student_epochs} student epochs, {args.noise_images} noise images per model, "
        "embedded digits, torch CPU threads as the default.",
        "",
        "| round | implementation | wall s | user s | system s | peak RSS MiB | load before |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        lines.append(
            f"| {r['round']} | {r['name']} | {r['wall_s']:.1f} | {r['user_s']:.1f} | "
            f"{r['system_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['load_before']:.2f} |"
        )
    verdicts = []
    lines += [
        "",
        "| round | ours / baseline wall (<= 0.8) | peak memory (<= 0.5) |",
        "| --- | --- | --- |",
    ]
    for round_index in range(1, args.rounds + 1):
        pair = {r["name"]: r for r in records if r["round"] == round_index}
        wall = pair["ours"]["wall_s"] / pair["baseline"]["wall_s"]
        memory = pair["ours"]["peak_rss_mb"] / pair["baseline"]["peak_rss_mb"]
        verdicts.append(
            {
                "round": round_index,
                "wall_ratio": wall,
                "memory_ratio": memory,
                "wall_met": wall <= 0.8,
                "memory_met": memory <= 0.5,
            }
        )
        lines.append(
            f"| {round_index} | {wall:.2f} ({'met' if wall <= 0.8 else 'NOT met'}) | "
            f"{memory:.2f} ({'met' if memory <= 0.5 else 'NOT met'}) |"
        )
    lines += [
        "",
        "| group | ours mean (se) | baseline mean (se) | difference | 95% interval | same |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    accuracy = []
    for group in ("teacher", "student_aux", "student_all", "cross_aux", "cross_all"):
        pooled = {}
        for name in ("ours", "baseline"):
            values = []
            for r in records:
                if r["name"] == name:
                    values += r["teacher"] if group == "teacher" else r["groups"][group]
            pooled[name] = _mean_and_se(values)
        difference = pooled["ours"][0] - pooled["baseline"][0]
        half = 1.96 * math.hypot(pooled["ours"][1], pooled["baseline"][1])
        same = abs(difference) <= half
        accuracy.append(
            {
                "group": group,
                "ours": pooled["ours"],
                "baseline": pooled["baseline"],
                "difference": difference,
                "half_width": half,
                "same": same,
            }
        )
        lines.append(
            f"| {group} | {pooled['ours'][0]:.3f} ({pooled['ours'][1]:.3f}) | "
            f"{pooled['baseline'][0]:.3f} ({pooled['baseline'][1]:.3f}) | {difference:+.3f} | "
            f"+-{half:.3f} | {'yes' if same else 'NO'} |"
        )
    (args.out / "compare.json").write_text(
        json.dumps(
            {
                "settings": vars(args) | {"out": str(args.out)},
                "runs": records,
                "verdicts": verdicts,
                "accuracy": accuracy,
            },
            indent=1,
        )
    )
    (args.out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
