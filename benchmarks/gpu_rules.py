"""The one-step rule report on GPT-2-small- and Qwen2-0.5B-shaped models (issue 12, item 4).

Builds ``GPT2LMHeadModel(GPT2Config())`` (12 layers, width 768, vocab 50257) and a
``Qwen2ForCausalLM`` from ``Qwen2Config(hidden_size=896, intermediate_size=4864,
num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
tie_word_embeddings=True)``, both randomly initialized (nothing is downloaded; eager attention,
which forward mode can differentiate). For each model, full and LoRA r = 16 (GPT-2: its Conv1D
projections; Qwen2: every Linear projection, not the tied head), it measures on one random-token
batch:

* the student's gradients once (:func:`sublim_theory.engine.rule_report.student_gradients`: the exact
  gradient, K v by jvp + vjp, the control gradient), and
* the report of each rule (sgd, momentum, adam, adam with a warmed state, signsgd:
  :func:`sublim_theory.engine.rule_report.report_rule`, with the trait-loss rows),

each as time and peak-memory ratios to one plain training step of the same parameterization on
the same batch (forward + backward + ``torch.optim.Adam`` step). Writes ``results.json`` and
``results.md`` under ``--out``. ``--size tiny`` (2 layers, width 32, vocab 64) runs on CPU in
seconds (tests/test_gpu_rules.py); peak memory is measured on CUDA only (CPU: null).

    python benchmarks/gpu_rules.py --size full --device cuda --out benchmarks/results/gpu_rules
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sublim_theory.engine.alignment import TeacherTask
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora, linear_layers
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.rule_report import report_rule, student_gradients, teacher_direction
from sublim_theory.engine.update_rules import make_rule, warmed_state

RULES = ("sgd", "momentum", "adam", "adam_warm", "signsgd")
RANK = 16
EPS = 1e-3


class CausalLogits(nn.Module):
    """tokens (N, T) -> logits (N, T, V) of a transformers causal LM (no cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits


def model_config(name: str, size: str) -> object:
    """The transformers config: GPT-2 small / the Qwen2-0.5B shape, or their tiny versions."""
    import transformers

    if name == "gpt2":
        options = {}
        if size == "tiny":
            options = {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64}
            options |= {"n_positions": 16, "bos_token_id": 0, "eos_token_id": 0}
        return transformers.GPT2Config(attn_implementation="eager", **options)
    shape = {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
    }
    if size == "tiny":
        shape = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 64,
        }
    return transformers.Qwen2Config(tie_word_embeddings=True, attn_implementation="eager", **shape)


def build(name: str, size: str) -> tuple[nn.Module, list[str]]:
    """The randomly initialized model (seed 0) and its LoRA targets (every projection, no head)."""
    import transformers

    torch.manual_seed(0)
    config = model_config(name, size)
    if name == "gpt2":
        model = transformers.GPT2LMHeadModel(config)
    else:
        model = transformers.Qwen2ForCausalLM(config)
    wrapped = CausalLogits(model).eval()
    return wrapped, [n for n in linear_layers(wrapped) if not n.endswith("lm_head")]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall clocks mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, work: Callable[[], object], repeats: int = 1) -> dict:
    """Median seconds of ``work`` and its peak memory above the memory in use before it."""
    times, peak = [], None
    for _ in range(repeats):
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - before
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def training_step(module: nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    """One plain step: forward, next-token cross-entropy, backward, Adam (trainable params)."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = module(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()

    return step


def ratio(value: dict, baseline: dict, key: str) -> float | None:
    """value / baseline for one key (None when not measured)."""
    if value[key] is None or not baseline[key]:
        return None
    return value[key] / baseline[key]


def run_one(name: str, parameterization: str, args: argparse.Namespace) -> list[dict]:
    """Rows for one model and parameterization: gradients and each rule, as ratios."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    def fresh() -> nn.Module:
        base, targets = build(name, args.size)
        base = base.to(device=device, dtype=dtype)
        return base if parameterization == "full" else add_lora(base, RANK, targets=targets)

    module = fresh()
    vocab = module.model.config.vocab_size
    generator = torch.Generator().manual_seed(1)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (n, args.seq_len), generator=generator).to(device)

    batch, teacher_batch = tokens(args.batch), tokens(args.batch)
    step = training_step(module, batch)
    step()  # warm-up (allocator, kernels)
    baseline = measure(device, step, repeats=3)
    del step, module  # the step moved the weights and holds Adam's state: start afresh
    if device.type == "cuda":
        torch.cuda.empty_cache()
    module = fresh()
    model = FunctionalModel(module)
    theta0 = model.flat_params()

    def trait(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), y[:, 1:].reshape(-1))

    task = TeacherTask(trait, teacher_batch, teacher_batch)
    direction = teacher_direction(model, theta0, task)
    loss = make_loss("softmax_ce")
    holder = {}

    def gradients() -> None:
        holder["g"] = student_gradients(model, direction, batch, loss, EPS, theta0=theta0)

    rows = []
    gradients()  # warm-up: the first forward-mode pass pays one-time setup
    cost = measure(device, gradients)
    common = {"model": name, "parameterization": parameterization, "num_params": model.num_params}
    rows.append(
        {
            **common,
            "part": "student_gradients",
            "time_ratio": ratio(cost, baseline, "seconds"),
            "memory_ratio": ratio(cost, baseline, "peak_bytes"),
            "seconds": cost["seconds"],
            "train_step_seconds": baseline["seconds"],
        }
    )
    warm = [task.gradient(model, theta0) for _ in range(2)]
    for rule_name in RULES:
        lr = 1.0 if rule_name in ("sgd", "momentum") else 1e-3  # as rules_default.toml
        rule = make_rule(rule_name.removesuffix("_warm"), lr)
        state = warmed_state(rule, theta0, warm) if rule_name.endswith("_warm") else None

        def report(rule=rule, state=state) -> None:
            holder["r"] = report_rule(holder["g"], rule, state, task)

        cost = measure(device, report)
        values = holder["r"].to_dict()
        rows.append(
            {
                **common,
                "part": rule_name,
                "time_ratio": ratio(cost, baseline, "seconds"),
                "memory_ratio": ratio(cost, baseline, "peak_bytes"),
                "seconds": cost["seconds"],
                "train_step_seconds": baseline["seconds"],
                **{
                    k: values[k]
                    for k in (
                        "cos_step_teacher",
                        "cos_step_K_v",
                        "cos_step_prediction",
                        "teacher_loss_change_exact",
                        "teacher_loss_change_first_order",
                    )
                },
            }
        )
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict], header: str) -> str:
    """The rows as a markdown table."""

    def cell(x: object) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return ""
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    columns = ["model", "parameterization", "num_params", "part", "time_ratio", "memory_ratio"]
    columns += ["cos_step_K_v", "cos_step_prediction", "teacher_loss_change_exact"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every model x parameterization and write results.json and results.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--models", nargs="+", choices=["gpt2", "qwen2"], default=["gpt2", "qwen2"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_rules"))
    args = parser.parse_args(argv)
    if args.size == "tiny":
        args.seq_len = min(args.seq_len, 8)
    rows = []
    for name in args.models:
        for parameterization in ("full", f"lora{RANK}"):
            started = time.perf_counter()
            rows += run_one(name, parameterization, args)
            print(f"{name} {parameterization}: {time.perf_counter() - started:.1f} s", flush=True)
    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    record = {
        "size": args.size,
        "device": device,
        "dtype": args.dtype,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "eps": EPS,
        "lora_rank": RANK,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    header = (
        f"size {args.size}, device {device}, {args.dtype}, batch {args.batch} x {args.seq_len} "
        "tokens; ratios to one training step (forward + backward + Adam) of the same "
        "parameterization; memory: peak above the memory in use before (CUDA only)."
    )
    (args.out / "results.md").write_text(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
