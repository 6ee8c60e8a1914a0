"""Real-model rows of the benchmark (issue 23, item 3): engine and testbed costs on an LLM.

What the engine and the real testbed cost on a pretrained LLM, against one gradient and against
plain ``transformers`` + ``peft`` code.

Everything runs in float32 with eager attention (``models.pretrained.load_pretrained``) on a
fixed batch, in one process, each case's paths timed round-robin (``experiment.time_paths``):

* ``alignment`` case, the engine in full parameter space on N number documents (a chat prompt
  with three seed numbers, then C completion tokens, the completion only scored:
  ``studies.real_check.number_inputs`` and ``CompletionLogits``), KL imitation loss, teacher
  outputs at theta_0 + 1e-3 v for a fixed random direction v. The unit is one gradient of the
  student loss on the batch, the engine's kernel (forward + backward, as in the other rows):

  - ``real_gradient``         -grad_theta E_x KL(y(x) || f(theta, x))
    (``student_update_kernel``): the unit;
  - ``real_gradient_module``  the same gradient by plain autograd on the module (reference);
  - ``real_first_order``      A = E[u^T M u] (``first_order_kernel``)          target <= 1.3;
  - ``real_gauss_newton``     K v = E[J^T M J] v (``gauss_newton_kernel``)     target <= 2.0;
  - ``real_report``           the full one-step ``alignment_report`` (no float32 noise floor);
  - ``real_gradient_public``  the validated public ``student_update`` (input and vector checks,
    a one-document forward to refuse mis-shaped inputs, float64 accumulation), over the unit:
    what the checks cost on a 134.5M-parameter vector;
  - ``real_first_order_public`` / ``real_gauss_newton_public``: ``first_order_coefficient``
    and ``gauss_newton_product`` over ``real_gradient_public`` (what a user calls, against the
    gradient a user calls), same targets.

* ``train`` case, the student's training (``testbeds.real_lm.train.train_student``: LoRA
  through ``engine.lora.add_lora``, Adam, loss on completions) against a plain loop written
  here with ``peft.get_peft_model`` and ``transformers`` only (right padding, the library's
  default positions and 2-D mask, logits of every position): the same examples in the same batches
  (``train.batch_indices``, the study's seeded permutations), the same LoRA config (rank, alpha,
  every projection but the head, no dropout, A_0 drawn from the same seed), the same Adam and
  the same loss, L = mean_i (1/|c_i|) sum_t -log p(c_i,t | ...). Each timed call builds the
  student from the base and takes ``train_steps`` steps. ``real_train_ours`` over
  ``real_train_plain``: target <= 1.0; the check column gives max_t |L_ours(t) - L_plain(t)|
  over the steps. Both take the token cross-entropy in float32 from (rows, V) logits; left
  (ours) and right (plain) padding change only the rounding, so the difference is a few float32
  ulps of the loss (an ulp at L ~ 2 is 2.4e-7); the first step's loss is the base model's,
  later steps pass through Adam, whose first step (m / sqrt(v) ~ sign of the gradient) can
  turn a rounding difference in a near-zero gradient entry into a full lr-sized one.

* ``generate`` case, greedy decoding of P number prompts with the KV cache:
  ``testbeds.real_lm.generate.sample_from_ids`` (temperature 0) against ``model.generate``
  (``do_sample=False``, left padding, the same stop tokens and budget). ``real_generate_ours``
  over ``real_generate_plain``: target <= 1.0; the check column counts the rows whose
  generated tokens are equal.

:func:`run_real_benchmarks` runs the three cases ``runs`` times one after the other and writes
``bench_real.json``, ``environment_real.json`` and ``bench_real.md`` beside (never over) the
other benchmark files of the output folder; the table marks every target met only when every
run meets it and gives the 1-minute load average at the start of each case in each run.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sublim_theory.engine.alignment import (
    first_order_coefficient,
    gauss_newton_product,
    student_update,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import KLDivergence
from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record
from sublim_theory.harness.runs import (
    OutputFolder,
    atomic_write_json,
    atomic_write_text,
    resolve_device,
)
from sublim_theory.studies.bench.experiment import (
    alignment_paths,
    load_average,
    synchronize,
    time_paths,
)
from sublim_theory.studies.bench.report import combine_runs, real_markdown, verdicts

__all__ = [
    "REAL_SIZES",
    "bench_real_alignment",
    "bench_real_generation",
    "bench_real_training",
    "number_examples",
    "plain_greedy",
    "plain_train",
    "run_real_benchmarks",
]

REAL_SIZES: dict[str, dict[str, Any]] = {
    # "tiny" is what the tests run (on a tiny random Llama); "default" the CPU rows
    # (4 documents of ~62 tokens, 16 of them scored); "gpt2" the size the GPU script passes.
    "tiny": {
        "documents": 2,
        "completion_tokens": 4,
        "train_examples": 4,
        "train_batch": 2,
        "train_steps": 2,
        "lora_rank": 2,
        "prompts": 2,
        "max_new_tokens": 6,
        "min_seconds": 0.0,
        "min_repeats": 2,
    },
    "default": {
        "documents": 4,
        "completion_tokens": 16,
        "train_examples": 8,
        "train_batch": 4,
        "train_steps": 2,
        "lora_rank": 8,
        "prompts": 4,
        "max_new_tokens": 32,
        "min_seconds": 0.0,
        "min_repeats": 3,
    },
    "gpt2": {
        "documents": 16,
        "completion_tokens": 16,
        "train_examples": 32,
        "train_batch": 16,
        "train_steps": 2,
        "lora_rank": 8,
        "prompts": 16,
        "max_new_tokens": 40,
        "min_seconds": 1.0,
        "min_repeats": 5,
    },
}

LORA_LR = 5e-4  # the real study's LoRA learning rate (configs/real_numbers_default.toml)


def number_examples(count: int, seed: int) -> list[tuple[str, str]]:
    """(user prompt, completion) pairs in the number documents' format, from one seed.

    The prompt is ``real_check.NUMBER_PROMPT`` with three uniform 3-digit seed numbers; the
    completion 4 to 9 more (uniform, so the rows of a batch differ in length and padding is
    exercised) in the paper's answer format ("629, 937, 136, ...").

    Returns:
        The pairs.

    """
    from sublim_theory.studies.real_check import NUMBER_PROMPT

    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        length = 3 + int(torch.randint(4, 10, (), generator=generator))
        values = torch.randint(100, 1000, (length,), generator=generator).tolist()
        prompt = NUMBER_PROMPT.format(numbers=", ".join(map(str, values[:3])))
        pairs.append((prompt, ", ".join(map(str, values[3:]))))
    return pairs


def _base(case: str, name: str, device: str, params: int, batch: int) -> dict[str, Any]:
    return {
        "case": case,
        "arch": name,
        "dtype": "float32",
        "device": device,
        "num_params": params,
        "batch": batch,
        "load": load_average(),
        "peak_memory_mb": None,
        "check": None,
    }


# --------------------------------------------------------------------------------------------
# the engine on the real model
# --------------------------------------------------------------------------------------------
def bench_real_alignment(
    lm: nn.Module, tokenizer: Any, name: str, size: dict[str, Any], device: str
) -> list[dict[str, Any]]:
    """Time the gradient, A, K v and the report on N number documents (full parameters).

    Returns:
        One row per path, ratios to ``real_gradient`` in the same case.

    """
    from sublim_theory.studies.real_check import CompletionLogits, number_inputs

    base = _base("alignment", name, device, 0, size["documents"])
    scored = size["completion_tokens"]
    inputs, _ = number_inputs(tokenizer, size["documents"], scored, seed=0)
    inputs = inputs.to(device)
    model = FunctionalModel(CompletionLogits(lm, scored))
    loss = KLDivergence()
    theta, v, targets, paths = alignment_paths(model, inputs, loss, "real_")
    paths |= {
        "real_gradient_public": lambda: student_update(model, theta, inputs, targets, loss),
        "real_first_order_public": lambda: first_order_coefficient(model, theta, inputs, loss, v),
        "real_gauss_newton_public": lambda: gauss_newton_product(model, theta, inputs, loss, v),
    }
    seconds = time_paths(paths, device, size["min_seconds"], size["min_repeats"], warmups=1)
    base |= {"num_params": model.num_params, "tokens": int(inputs.shape[1] - scored + 1)}
    unit = {path: "real_gradient" for path in paths}
    unit["real_first_order_public"] = unit["real_gauss_newton_public"] = "real_gradient_public"
    return [
        {
            **base,
            "path": path,
            "seconds": seconds[path],
            "ratio": seconds[path] / seconds[unit[path]],
            "baseline": unit[path],
        }
        for path in paths
    ]


# --------------------------------------------------------------------------------------------
# the student's training: ours against plain transformers + peft
# --------------------------------------------------------------------------------------------
def _projections(lm: nn.Module) -> list[str]:
    """Short names of the Linear layers below the output head (q/k/v/o, gate/up/down)."""
    return sorted(
        {
            name.split(".")[-1]
            for name, sub in lm.named_modules()
            if isinstance(sub, nn.Linear) and name.split(".")[-1] != "lm_head"
        }
    )


def plain_train(
    lm: nn.Module,
    tokenizer: Any,
    examples: Sequence[tuple[str, str]],
    batches: Sequence[Sequence[int]],
    *,
    rank: int,
    lr: float,
    seed: int = 0,
) -> list[float]:
    """The student's LoRA training written with plain ``transformers`` + ``peft``.

    Per batch: chat-template each prompt, append the completion and the end of turn, right-pad,
    one forward with the 2-D attention mask, token cross-entropy on the completion (labels
    -100 elsewhere), averaged per example then over the batch, ``backward``, ``Adam.step``.

    Returns:
        The loss of each batch before its step.

    """
    import peft

    config = peft.LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=_projections(lm),
        lora_dropout=0.0,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = peft.get_peft_model(copy.deepcopy(lm), config)
    student.train()
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    device = next(student.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    losses = []
    for batch in batches:
        rows, labels = [], []
        for index in batch:
            prompt, completion = examples[index]
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
            answer = tokenizer(completion, add_special_tokens=False).input_ids
            answer = answer + [tokenizer.eos_token_id]
            rows.append(prompt_ids + answer)
            labels.append([-100] * len(prompt_ids) + answer)
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        target = torch.tensor([t + [-100] * (width - len(t)) for t in labels], device=device)
        logits = student(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        target = target[:, 1:]
        token_loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).reshape(target.shape)
        counted = (target != -100).sum(-1)
        loss = (token_loss.sum(-1) / counted).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def bench_real_training(
    lm: nn.Module, tokenizer: Any, name: str, size: dict[str, Any], device: str
) -> list[dict[str, Any]]:
    """Time ``train_student`` (LoRA) against :func:`plain_train` on the same batches.

    Returns:
        The plain loop's row (the unit) and ours, with max |loss difference| in ``check``.

    """
    from sublim_theory.testbeds.real_lm.train import batch_indices, train_student

    examples = number_examples(size["train_examples"], seed=2)
    steps, batch, rank = size["train_steps"], size["train_batch"], size["lora_rank"]
    batches = batch_indices(len(examples), batch, steps, 0)
    losses: dict[str, list[float]] = {}
    trainable: list[int] = []

    def ours() -> None:
        result = train_student(
            lm,
            tokenizer,
            examples,
            method="lora",
            rank=rank,
            steps=steps,
            batch_size=batch,
            lr=LORA_LR,
            seed=0,
        )
        losses["ours"], trainable[:] = result.losses, [result.trainable]

    def plain() -> None:
        losses["plain"] = plain_train(lm, tokenizer, examples, batches, rank=rank, lr=LORA_LR)

    base = _base("train", name, device, 0, batch)
    seconds = time_paths(
        {"plain": plain, "ours": ours}, device, size["min_seconds"], size["min_repeats"], warmups=1
    )
    difference = max(abs(a - b) for a, b in zip(losses["ours"], losses["plain"], strict=True))
    base |= {"num_params": trainable[0], "steps": steps, "losses": losses}
    return [
        {
            **base,
            "path": "real_train_plain",
            "seconds": seconds["plain"],
            "ratio": 1.0,
            "baseline": "itself",
        },
        {
            **base,
            "path": "real_train_ours",
            "seconds": seconds["ours"],
            "ratio": seconds["ours"] / seconds["plain"],
            "baseline": "real_train_plain",
            "check": f"max abs loss diff {difference:.2e}",
            "loss_max_abs_diff": difference,
        },
    ]


# --------------------------------------------------------------------------------------------
# generation: ours against model.generate
# --------------------------------------------------------------------------------------------
def plain_greedy(
    lm: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop_ids: Sequence[int],
) -> list[list[int]]:
    """Greedy answers from ``model.generate`` (left padding), each cut before its first stop token.

    Returns:
        The generated ids per prompt.

    """
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    batch = tokenizer(
        texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
    ).to(next(lm.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = lm.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(stop_ids),
            pad_token_id=pad,
        )
    answers = []
    stops = set(stop_ids)
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        answers.append(row[:cut])
    return answers


def bench_real_generation(
    lm: nn.Module, tokenizer: Any, name: str, size: dict[str, Any], device: str
) -> list[dict[str, Any]]:
    """Time greedy ``sample_from_ids`` against ``model.generate`` on the same prompts.

    Returns:
        The plain row (the unit) and ours, with the rows whose outputs are equal in ``check``.

    """
    from sublim_theory.testbeds.real_lm.generate import sample_from_ids
    from sublim_theory.testbeds.real_lm.prompts import chat_ids

    prompts = [prompt for prompt, _ in number_examples(size["prompts"], seed=3)]
    encoded = [chat_ids(tokenizer, p) for p in prompts]
    budget = size["max_new_tokens"]
    stop_ids = sorted(
        {int(tokenizer.eos_token_id)} | {int(i) for i in tokenizer.all_special_ids}
    )  # what sample_from_ids stops at when unconstrained
    outputs: dict[str, list[list[int]]] = {}

    def ours() -> None:
        completions = sample_from_ids(
            lm,
            tokenizer,
            encoded,
            temperature=0.0,
            max_new_tokens=budget,
            batch_size=len(encoded),
            seed=0,
        )
        outputs["ours"] = [list(c.token_ids) for c in completions]

    def plain() -> None:
        outputs["plain"] = plain_greedy(lm, tokenizer, prompts, budget, stop_ids)

    base = _base("generate", name, device, sum(p.numel() for p in lm.parameters()), len(prompts))
    seconds = time_paths(
        {"plain": plain, "ours": ours}, device, size["min_seconds"], size["min_repeats"], warmups=1
    )
    equal = sum(a == b for a, b in zip(outputs["ours"], outputs["plain"], strict=True))
    tokens = [len(row) for row in outputs["ours"]]
    base |= {"max_new_tokens": budget, "generated_tokens": tokens}
    return [
        {
            **base,
            "path": "real_generate_plain",
            "seconds": seconds["plain"],
            "ratio": 1.0,
            "baseline": "itself",
        },
        {
            **base,
            "path": "real_generate_ours",
            "seconds": seconds["ours"],
            "ratio": seconds["ours"] / seconds["plain"],
            "baseline": "real_generate_plain",
            "check": f"greedy outputs equal {equal}/{len(prompts)}",
            "outputs_equal": equal,
        },
    ]


# --------------------------------------------------------------------------------------------
# the run and its table
# --------------------------------------------------------------------------------------------
def run_real_benchmarks(
    out_dir: str | Path,
    model: str | os.PathLike = "smollm2-135m-instruct",
    size: str = "default",
    device: str = "cpu",
    runs: int = 2,
    threads: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Run the real-model cases ``runs`` times; write bench_real.{json,md}, environment_real.json.

    Args:
        out_dir: the output folder (shared with ``bench``'s other files, which are left alone).
        model: a packaged name, a ``.gguf`` path or a local ``transformers`` directory
            (``models.pretrained.load_pretrained``), loaded in float32 with eager attention.
        size: a key of ``REAL_SIZES`` (batch, documents, steps, budget).
        device: cpu, cuda or auto.
        runs: runs one after the other (a target is met only if met in every run).
        threads: torch CPU threads for the run (0: torch's default).
        cache_dir: where ``load_pretrained`` keeps a GGUF's dequantized weights.

    Returns:
        The paths of bench_real.json, environment_real.json and bench_real.md.

    Raises:
        InputError: an unknown size, runs < 1, threads < 0, a model that cannot be loaded,
            or an output folder that cannot be written.

    """
    from sublim_theory.models.pretrained import load_pretrained

    if size not in REAL_SIZES:
        raise InputError(f"unknown benchmark size '{size}'; choose one of {sorted(REAL_SIZES)}")
    if runs < 1:
        raise InputError(f"--runs must be >= 1, got {runs}")
    if threads < 0:
        raise InputError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    device = resolve_device(device).type
    spec = REAL_SIZES[size]
    with OutputFolder(out_dir, "bench") as folder:
        default_threads = torch.get_num_threads()
        torch.set_num_threads(threads or default_threads)
        try:
            pretrained = load_pretrained(model, dtype=torch.float32, cache_dir=cache_dir)
            lm, tokenizer = pretrained.model.to(device), pretrained.tokenizer
            name = Path(str(pretrained.name)).name
            rows: list[dict[str, Any]] = []
            for run in range(1, runs + 1):
                for bench in (bench_real_alignment, bench_real_training, bench_real_generation):
                    rows += [
                        {**row, "run": run} for row in bench(lm, tokenizer, name, spec, device)
                    ]
                    synchronize(device)
                    print(f"  real {bench.__name__} run {run}: done", file=sys.stderr)
            env = environment_record(device)
        finally:
            torch.set_num_threads(default_threads)
        setup = {"model": name, "sha256": pretrained.sha256, "size": size, **spec}
        setup["lora_lr"] = LORA_LR
        paths = [
            folder.path / f for f in ("bench_real.json", "environment_real.json", "bench_real.md")
        ]
        record = {
            "setup": setup,
            "rows": rows,
            "verdicts": verdicts(rows),
            "combined": combine_runs(rows),
        }
        atomic_write_json(paths[0], record)
        atomic_write_json(paths[1], env)
        atomic_write_text(paths[2], real_markdown(rows, env, setup))
    return paths
