"""Does the suite bite? Apply deliberate bugs to the engine and losses, run the tests on each.

Each mutation replaces one exact piece of source text (it must occur exactly once, so a
refactor that moves the code makes this script fail loudly rather than test nothing). Every
mutation runs the whole suite in a scratch copy of the checkout; a mutation that no test catches
is a hole in the suite. Run with ``make mutations`` (about 2 minutes per mutation per core):

    python tests/mutations.py [--jobs 2] [--only NAME ...] [--out mutations.json]

``--targeted`` runs, for each mutation that names them, only the test files of the module it
mutates (``Mutation.tests``): minutes instead of hours for the study-level mutations, and
conservative (a mutation those files miss is reported as surviving even if another file
would catch it).

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
    tests: tuple[str, ...] = ()  # the test files (or node ids) of the module, for --targeted

    @property
    def paths(self) -> str:
        return ", ".join(sorted({edit.path for edit in self.edits}))


ENGINE, REPORT = "sublim_theory/engine/alignment.py", "sublim_theory/engine/report.py"
SCORES = "sublim_theory/engine/trait_scores.py"
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
                'NOISE_SEED_OFFSET = OFFSETS["zoo.placement_noise"]',
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
    # the factored trait scores (engine/trait_scores.py, issue 23)
    Mutation(
        "factored scores: drop the Linear bias term",
        (Edit(SCORES, "scores += d.sum(1) @ bias.T", "scores += 0 * (d.sum(1) @ bias.T)"),),
    ),
    Mutation(
        "factored scores: score each parameter's first use only (a tied use dropped)",
        (
            Edit(
                SCORES,
                """        for use in recorder.uses:
            deltas = [None if o is None else delta_of.get(id(o)) for o in use.outputs]
            if all(dl is None for dl in deltas):
                continue  # no example's loss depends on this use
            scores""",
                """        seen: set = set()
        for use in recorder.uses:
            deltas = [None if o is None else delta_of.get(id(o)) for o in use.outputs]
            indices = {n.index for n in use.call.nodes if isinstance(n, _Param)}
            if all(dl is None for dl in deltas) or indices & seen:
                continue  # no example's loss depends on this use
            seen |= indices
            scores""",
            ),
        ),
    ),
    Mutation(
        "factored scores: forget the embedding's padding row",
        (
            Edit(
                SCORES, "    if padding_idx is None:\n        return delta\n", "    return delta\n"
            ),
        ),
    ),
    Mutation(
        "factored scores: drop the preconditioner in the probe-factored Linear",
        (Edit(SCORES, "applied = (layer * scale) @ probe_a.T", "applied = layer @ probe_a.T"),),
    ),
    Mutation(
        "factored scores: reuse any cached derived tensor",
        (
            Edit(
                SCORES,
                "    if a is b:\n        return True\n",
                "    if True:\n        return True\n",
            ),
        ),
    ),
)


RULE_REPORT = "sublim_theory/engine/rule_report.py"
RULE_TESTS = ("tests/engine/test_engine_bounds.py", "tests/engine/test_rule_report.py")
LORA_TESTS = ("tests/engine/test_engine_bounds.py", "tests/engine/test_lora.py")
STORE_TESTS = ("tests/harness",)
DYNAMICS_STORE = ("tests/studies/dynamics/test_dynamics_store.py",)
# Issue 24 item 7: one-line bugs in every module that produces a committed number or keeps the
# run layer's guarantees; each names the test files that cover its module (--targeted).
MUTATIONS += (
    Mutation(
        "rule_report: flip the sign of the offset term away from the shared init",
        (Edit(RULE_REPORT, "first = -(eps * k_v - k_offset)", "first = -(eps * k_v + k_offset)"),),
        RULE_TESTS,
    ),
    Mutation(
        "rule_report: add the control's trait change instead of subtracting it",
        (
            Edit(
                RULE_REPORT,
                "change_vs_control = stepped - base - change_control",
                "change_vs_control = stepped - base + change_control",
            ),
        ),
        RULE_TESTS,
    ),
    Mutation(
        "rule_report: the teacher's share of the step ignores the control step",
        (
            Edit(
                RULE_REPORT,
                "signal = step - control if control is not None else missing",
                "signal = step if control is not None else missing",
            ),
        ),
        RULE_TESTS,
    ),
    Mutation(
        "rule_report: accept a step that overflowed",
        (
            Edit(
                RULE_REPORT,
                "if vector is not None and not bool(torch.isfinite(vector).all()):",
                "if False:",
            ),
        ),
        RULE_TESTS,
    ),
    Mutation(
        "update_rules: correct Adam's second moment with beta1",
        (
            Edit(
                "sublim_theory/engine/update_rules.py",
                "corrected_sq = exp_avg_sq / (1 - self.beta2**step_count).to(exp_avg.dtype)",
                "corrected_sq = exp_avg_sq / (1 - self.beta1**step_count).to(exp_avg.dtype)",
            ),
        ),
        ("tests/engine/test_update_rules.py",),
    ),
    Mutation(
        "lora: default alpha 1 (scale 1/r) instead of the rank (scale 1)",
        (
            Edit(
                "sublim_theory/engine/lora.py",
                "alpha = float(rank if alpha is None else alpha)",
                "alpha = float(1 if alpha is None else alpha)",
            ),
        ),
        LORA_TESTS,
    ),
    Mutation(
        "lora: refuse the full rank itself",
        (Edit("sublim_theory/engine/lora.py", "if rank > min(shape):", "if rank >= min(shape):"),),
        LORA_TESTS,
    ),
    Mutation(
        "screen: a 90% bootstrap interval reported as 95%",
        (
            Edit(
                "sublim_theory/engine/screen.py",
                "low, high = np.percentile(means, [2.5, 97.5], axis=0)",
                "low, high = np.percentile(means, [5.0, 95.0], axis=0)",
            ),
        ),
        ("tests/studies/screen/test_screen_filter.py", "tests/studies/screen/test_screen.py"),
    ),
    Mutation(
        "screen study: the filter drops the least-pushing documents",
        (
            Edit(
                "sublim_theory/studies/screen/experiment.py",
                "order = torch.argsort(attributions, descending=True, stable=True)",
                "order = torch.argsort(attributions, descending=False, stable=True)",
            ),
        ),
        ("tests/studies/screen/test_screen_filter.py", "tests/studies/screen/test_screen.py"),
    ),
    Mutation(
        "runs: the settings check compares only the keys both runs have",
        (
            Edit(
                "sublim_theory/harness/runs.py",
                "for key in sorted(set(before) | set(after)):",
                "for key in sorted(set(before) & set(after)):",
            ),
        ),
        ("tests/harness", "tests/harness/test_runs.py"),
    ),
    Mutation(
        "store: keep an incomplete unit at the end of a CSV store",
        (Edit("sublim_theory/harness/store.py", "if kept < len(text.encode()):", "if False:"),),
        STORE_TESTS,
    ),
    Mutation(
        "runs: a failed append leaves its partial bytes",
        (
            Edit(
                "sublim_theory/harness/runs.py",
                "os.ftruncate(descriptor, start)",
                "pass",
            ),
        ),
        STORE_TESTS,
    ),
    Mutation(
        "sweep: a configuration counts as done when any of its seeds is stored",
        (
            Edit(
                "sublim_theory/studies/init_distance/run.py",
                "if not set(self.seeds[key]) <= self.stored_seeds(key):",
                "if not self.stored_seeds(key):",
            ),
        ),
        ("tests/studies/init_distance/test_sweep_folder.py",),
    ),
    Mutation(
        "sweep measure: the expected-offset prediction adds E[Delta]",
        (
            Edit(
                "sublim_theory/studies/init_distance/measure.py",
                "expected = eps * k_v.double() - k_mean.double()",
                "expected = eps * k_v.double() + k_mean.double()",
            ),
        ),
        (
            "tests/studies/init_distance/test_sweep_expected.py",
            "tests/studies/init_distance/test_sweep.py",
        ),
    ),
    Mutation(
        "rules: legacy rows of other settings are taken as done",
        (
            Edit(
                "sublim_theory/studies/rules/study.py",
                'if not key.endswith("|" + stamp):',
                "if False:",
            ),
        ),
        ("tests/studies/rules/test_rules_store.py",),
    ),
    Mutation(
        "mnist: models.csv takes the first epoch's cosine, not the last",
        (
            Edit(
                "sublim_theory/studies/mnist/report.py",
                'cosine=group["cosine_per_epoch"][-1][i]',
                'cosine=group["cosine_per_epoch"][0][i]',
            ),
        ),
        ("tests/studies/mnist/test_mnist_store.py", "tests/studies/mnist/test_mnist_study.py"),
    ),
    Mutation(
        "mnist: runs with other learning rates share teachers",
        (
            Edit(
                "sublim_theory/studies/mnist/experiment.py",
                '"lr", "weight_decay", "batch_size", "seed")',
                '"weight_decay", "batch_size", "seed")',
            ),
        ),
        ("tests/studies/mnist/test_mnist_study.py",),
    ),
    Mutation(
        "defenses: the agreement mask keeps the disagreements",
        (
            Edit(
                "sublim_theory/studies/defenses/experiment.py",
                "out.append(teacher(inputs).argmax(-1) == base(inputs).argmax(-1))",
                "out.append(teacher(inputs).argmax(-1) != base(inputs).argmax(-1))",
            ),
        ),
        ("tests/studies/defenses/test_defenses.py",),
    ),
    Mutation(
        "numbers variants: the trait-gradient cosine's sign flipped",
        (
            Edit(
                "sublim_theory/studies/finetune/variants.py",
                "return cosine(trait.double(), distill.double())",
                "return cosine(trait.double(), -distill.double())",
            ),
        ),
        ("tests/studies/finetune/test_finetune.py",),
    ),
    Mutation(
        "dynamics: the teacher's accuracy row before the reference's",
        (
            Edit(
                "sublim_theory/studies/dynamics/report.py",
                'key=lambda r: (r["model"], r["group"] != "reference"),',
                'key=lambda r: (r["model"], r["group"] == "reference"),',
            ),
        ),
        DYNAMICS_STORE,
    ),
    Mutation(
        "dynamics: epoch 1 stored without the untrained accuracies",
        (
            Edit(
                "sublim_theory/studies/dynamics/study.py",
                "epochs = [0, epoch] if epoch == 1 else [epoch]",
                "epochs = [epoch]",
            ),
        ),
        DYNAMICS_STORE,
    ),
    Mutation(
        "dynamics: the ablation also fires on steps that raise the trait loss",
        (
            Edit(
                "sublim_theory/studies/dynamics/experiment.py",
                "fire = (inner < 0) & (squared > 0)",
                "fire = squared > 0",
            ),
        ),
        ("tests/studies/dynamics/test_dynamics.py",),
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


def run_suite(
    mutation: Mutation | None, python: str, first: bool = False, targeted: bool = False
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="sublim-mutation-") as scratch:
        tree = Path(scratch) / "tree"
        scratch_copy(tree)
        if mutation is not None:
            apply(mutation, tree)
        start = time.perf_counter()
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        result = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "-rfE"]
            + (["-x"] if first else [])
            + (list(mutation.tests) if targeted and mutation is not None else []),
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
    parser.add_argument(
        "--targeted",
        action="store_true",
        help="run only each mutation's own test files (Mutation.tests) where it names them",
    )
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(word in m.name for word in args.only)]
    for mutation in chosen:  # fail fast on stale source text, before any suite runs
        check_source(mutation)
    # Unless --first, the unmutated suite runs first (beside the first mutation): if it fails,
    # every row would be meaningless, so the mutations not yet started are cancelled.
    runs = chosen if args.first else [None, *chosen]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_suite, m, args.python, args.first, args.targeted) for m in runs]
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
