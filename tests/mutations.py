"""Does the suite bite? Apply deliberate bugs to the engine and losses, run the tests on each.

Each mutation replaces one exact piece of source text (it must occur exactly once, so a
refactor that moves the code makes this script fail loudly rather than test nothing). Every
mutation runs the whole suite in a scratch copy of the checkout; a mutation that no test catches
is a hole in the suite. Run with ``make mutations`` (about 2 minutes per mutation per core):

    python tests/mutations.py [--jobs 2] [--only NAME ...] [--out mutations.json]

It prints a Markdown table (mutation -> tests that failed) and exits 1 if any mutation survives.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# left out of the scratch copy: at the checkout's top level only (experiments/results is needed)
IGNORED = {
    ".git",
    ".venv",
    "out",
    "results",
    "build",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
}


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str
    count: int = 1  # how many times ``old`` occurs (every occurrence is replaced)


@dataclass(frozen=True)
class Mutation:
    name: str
    edits: tuple[Edit, ...]

    @property
    def paths(self) -> str:
        return ", ".join(sorted({edit.path for edit in self.edits}))


ENGINE, REPORT = "sublim_theory/engine/alignment.py", "sublim_theory/engine/report.py"
# Each bug is planted in every code path that computes the quantity: the kernels (torch.func,
# used inside vmap, and dual tensors outside it) and the report's shared pass.
MUTATIONS = (
    Mutation(
        "flip the sign of G in B",
        (
            Edit(
                ENGINE,
                "b = b - (u64 * loss.target_curvature(z0, u).double()).sum()",
                "b = b + (u64 * loss.target_curvature(z0, u).double()).sum()",
            ),
            Edit(
                REPORT,
                "b = -(u64 * loss.target_curvature(outputs, tangent).double()).sum()",
                "b = +(u64 * loss.target_curvature(outputs, tangent).double()).sum()",
            ),
        ),
    ),
    Mutation(
        "drop the 1/2 in B",
        (
            Edit(ENGINE, "torch.stack([a, 0.5 * b])", "torch.stack([a, b])"),
            Edit(REPORT, "torch.stack([a, 0.5 * b])", "torch.stack([a, b])"),
        ),
    ),
    Mutation(
        "use the fused layer_norm in the nested jvp",
        (
            Edit(
                "sublim_theory/engine/forward_ad.py",
                "    F.layer_norm: _layer_norm,\n    torch.layer_norm: _layer_norm,\n",
                "",
            ),
        ),
    ),
    Mutation(
        "drop the 1/tau^2 of KL",
        (
            Edit(
                "sublim_theory/engine/losses.py",
                "_softmax_first_derivative(torch.softmax(z0 / tau, -1), u) / tau**2",
                "_softmax_first_derivative(torch.softmax(z0 / tau, -1), u)",
            ),
        ),
    ),
    Mutation(
        "forget the subset restriction",
        (
            Edit(
                "sublim_theory/engine/losses.py",
                "return z if index is None else z.index_select(-1, index)",
                "return z",
            ),
        ),
    ),
    Mutation(
        "average over samples but not sequence positions",
        (Edit(ENGINE, "return outputs.numel() // outputs.shape[-1]", "return outputs.shape[0]"),),
    ),
    Mutation(
        "reuse the teacher's seed stream for placement noise",
        (
            Edit(
                "sublim_theory/testbeds/zoo.py",
                "NOISE_SEED_OFFSET = 4_000_037",
                "NOISE_SEED_OFFSET = TEACHER_DATA_SEED_OFFSET",
            ),
        ),
    ),
    Mutation(
        "flip the sign of the screendata trait loss",
        (
            Edit(
                "sublim_theory/studies/screen_data.py",
                "return -_token_log_probs(outputs, targets)[0].sum(1).mean()",
                "return _token_log_probs(outputs, targets)[0].sum(1).mean()",
            ),
        ),
    ),
    Mutation(
        "sum instead of mean in K",
        (
            Edit(ENGINE, "return product / output_positions(z0)", "return product", count=2),
            Edit(REPORT, "first = first / positions", "first = first"),
        ),
    ),
)


def scratch_copy(destination: Path) -> None:
    """The checkout as it is now (uncommitted edits included), without caches and venvs."""

    def ignored(folder: str, names: list[str]) -> set[str]:
        caches = {n for n in names if n == "__pycache__"}
        return caches | (IGNORED & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, destination, ignore=ignored, symlinks=True)


def check_source(mutation: Mutation, tree: Path = ROOT) -> None:
    """Each edit's text must occur exactly as often as stated, or the mutation tests nothing."""
    for edit in mutation.edits:
        count = (tree / edit.path).read_text().count(edit.old)
        if count != edit.count:
            raise SystemExit(
                f"mutation '{mutation.name}': the text to replace occurs {count} times in "
                f"{edit.path}, expected {edit.count}; update tests/mutations.py to the source"
            )


def apply(mutation: Mutation, tree: Path) -> None:
    check_source(mutation, tree)
    for edit in mutation.edits:
        path = tree / edit.path
        path.write_text(path.read_text().replace(edit.old, edit.new))


def run_suite(mutation: Mutation | None, python: str, first: bool = False) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="sublim-mutation-") as scratch:
        tree = Path(scratch) / "tree"
        scratch_copy(tree)
        if mutation is not None:
            apply(mutation, tree)
        start = time.perf_counter()
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        result = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "-rfE"]
            + (["-x"] if first else []),
            cwd=tree,
            env=environment,
            capture_output=True,
            text=True,
        )
        output = result.stdout + result.stderr
        failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)))
        summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
        return {
            "mutation": None if mutation is None else mutation.name,
            "path": None if mutation is None else mutation.paths,
            "failed_tests": failed,
            "summary": summary[-1] if summary else output[-500:],
            "exit_code": result.returncode,
            "seconds": round(time.perf_counter() - start, 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="suites run at once (default 2)")
    parser.add_argument("--only", nargs="*", help="names (substrings) of mutations to run")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--python", default=sys.executable, help="interpreter with pytest")
    parser.add_argument(
        "--first",
        action="store_true",
        help="stop each suite at its first failure (pytest -x) and skip the unmutated run, which "
        "`make test` establishes: shows each mutation is caught, not every test that catches it",
    )
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(word in m.name for word in args.only)]
    for mutation in chosen:  # fail fast on stale source text, before any suite runs
        check_source(mutation)
    # Unless --first, the unmutated suite runs first (beside the first mutation): if it fails,
    # every row would be meaningless, so the mutations not yet started are cancelled.
    runs = chosen if args.first else [None, *chosen]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_suite, m, args.python, args.first) for m in runs]
        if not args.first:
            baseline = futures.pop(0).result()
            if baseline["failed_tests"] or baseline["exit_code"] != 0:
                for future in futures:
                    future.cancel()
                failed = ", ".join(baseline["failed_tests"]) or "see the summary"
                print(
                    f"the unmutated suite fails ({baseline['summary']}: {failed}); fix it first",
                    file=sys.stderr,
                )
                return 2
            print(f"unmutated suite: {baseline['summary']}\n")
        results = [future.result() for future in futures]
    print("| mutation | file | tests that caught it | suite |")
    print("| --- | --- | --- | --- |")
    survivors = 0
    for row in results:
        caught = row["failed_tests"]
        survivors += not caught
        names = "<br>".join(caught) if caught else "**none: the mutation survived**"
        print(f"| {row['mutation']} | {row['path']} | {names} | {row['summary']} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
