"""Top of a torch.profiler (CPU) profile of each engine path on the benchmark cases.

Usage (from the repository root): ``python benchmarks/profile_engine.py OUT_DIR [--size default]``.
Writes ``OUT_DIR/<arch>-<dtype>-<path>.txt`` (the ``row_limit`` ops with the most self CPU
time over ``repeats`` calls, after two warm-up calls) and ``OUT_DIR/summary.md`` (milliseconds
per call of each path and its ratio to one student gradient, as profiled: a profile slows
every op, so the benchmark's round-robin timings are the figures to quote).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from sublim_theory.engine.alignment import (
    first_order_kernel,
    gauss_newton_kernel,
    student_update_kernel,
)
from sublim_theory.engine.losses import SoftCrossEntropy
from sublim_theory.engine.report import alignment_report
from sublim_theory.studies.bench.experiment import SIZES, Case, build_case


def _paths(case: Case) -> dict[str, Callable[[], object]]:
    """The engine paths of the benchmark on one case (as ``studies.bench.experiment.bench_case``)."""
    model, inputs, loss = case.model, case.inputs, SoftCrossEntropy()
    theta = model.flat_params()
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    with torch.no_grad():
        targets = model(theta + 1e-3 * v, inputs)
    return {
        "gradient": lambda: student_update_kernel(model, theta, inputs, targets, loss),
        "first_order": lambda: first_order_kernel(model, theta, inputs, loss, v),
        "gauss_newton": lambda: gauss_newton_kernel(model, theta, inputs, loss, v),
        "report": lambda: alignment_report(model, v, inputs, loss, 1e-3, theta0=theta),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--row-limit", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="1: steadier on a shared machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Profiles (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average at start {os.getloadavg()[0]:.2f})",
        "",
        "| arch | dtype | path | ms per call (profiled) | ratio to gradient |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    with profile(activities=[ProfilerActivity.CPU]):  # the profiler's own start-up, untimed
        torch.ones(8) @ torch.ones(8)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for arch, size in SIZES[args.size].items():
            paths = _paths(build_case(arch, size, dtype, "cpu"))
            per_call = {}
            for name, fn in paths.items():
                for _ in range(2):
                    fn()
                start = time.perf_counter()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(args.repeats):
                        fn()
                per_call[name] = (time.perf_counter() - start) / args.repeats
                table = prof.key_averages().table(
                    sort_by="self_cpu_time_total",
                    row_limit=args.row_limit,
                    max_name_column_width=60,
                )
                header = f"{arch} {dtype_name} {name}: {args.repeats} calls, "
                header += f"{per_call[name] * 1e3:.2f} ms per call (profiled)\n"
                (args.out / f"{arch}-{dtype_name}-{name}.txt").write_text(header + table)
            for name, seconds in per_call.items():
                ratio = seconds / per_call["gradient"]
                lines.append(
                    f"| {arch} | {dtype_name} | {name} | {seconds * 1e3:.2f} | {ratio:.2f} |"
                )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
