"""Benchmarks: what measuring alignment costs, in units of the training step it studies.

Every figure is a ratio measured in one run, on one machine, on the same batch:
time(path) / time(one student gradient). Paths:

* ``gradient``          -grad_theta E_x l(f(theta, x), y) (forward + backward): the unit;
* ``first_order``       A = E[u^T M u] (one jvp)                      target <= 1.2;
* ``gauss_newton``      K v = E[J^T M J] v (jvp + vjp)                target <= 1.8;
* ``gradient_module``   the same gradient by plain autograd on the ``nn.Module`` (what a
  training loop runs), for reference: the unit is ours, this shows how it compares;
* ``report``            the full one-step report (targets, exact update, K(eps v), A, B, the
  exact alignment at eps*; no float32 noise floor)                  target <= 4;
* ``explicit_jacobian`` K v = J^T M J v from the materialized Jacobian (jacrev), on a small
  batch, divided by the gradient on that same small batch;
* ``curvlinops_ggn``    curvlinops' GGNLinearOperator matvec (softmax cross-entropy, whose GGN
  is our K for ``softmax_ce``), when curvlinops is installed; target ours <= 0.75 x theirs;
* ``seeds_vmap[S]`` / ``seeds_loop_over_vmap``: A and K v for S seeds of a small MLP through
  vmap, and through a Python loop (its time over vmap's); target loop / vmap >= 3 at S = 32 on
  CPU;
* ``mnist_step_batched``: one distillation step of the MNIST reproduction for N models, as the
  experiment runs it (batched), over the same N models as separate modules trained in a Python
  loop with plain autograd; target <= 1 (no slower);
* ``screen_jvp[K]`` / ``screen_factored[K]``: the trait screen for K traits in one-epoch
  equivalents (wall time over one training epoch on the same documents), today's jvp path
  beside the factored one (``studies.bench.screen``); targets factored <= 1.5 at K = 10 and
  <= 2.5 at K = 100.

Every benchmark runs ``runs`` times (default 2) one after the other; the table shows each run's
ratio and marks a target met only when every run meets it ("mixed" when some do). The 1-minute
load average at the start of each case is recorded beside it: on a shared machine, ratios from
a loaded run are noisier.

Peak memory: on CUDA ``max_memory_allocated`` per path; on CPU the process's peak RSS (a
high-water mark for the whole run, so it is reported once, not per path).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sublim_theory.engine.alignment import (
    first_order_kernel,
    gauss_newton_kernel,
    student_update_kernel,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss, SoftCrossEntropy
from sublim_theory.engine.report import alignment_report
from sublim_theory.errors import InputError
from sublim_theory.harness.records import environment_record
from sublim_theory.harness.runs import (
    DTYPES,
    OutputFolder,
    atomic_write_json,
    atomic_write_text,
    resolve_device,
)
from sublim_theory.models.architectures import MLP, TinyTransformer, build_model, make_inputs
from sublim_theory.studies.bench.report import combine_runs, markdown, verdicts
from sublim_theory.testing import reference

__all__ = [
    "curvlinops_matvec",
    "alignment_paths",
    "load_average",
    "synchronize",
    "SIZES",
    "Case",
    "bench_case",
    "bench_mnist_training",
    "bench_seeds",
    "build_case",
    "run_benchmarks",
    "time_paths",
]


SIZES: dict[str, dict[str, dict[str, Any]]] = {
    # name -> architecture -> (constructor kwargs, batch); "tiny" is what the tests run.
    "tiny": {
        "mlp": {"batch": 16, "small_batch": 2, "in_features": 12, "width": 8, "depth": 2},
        "cnn": {"batch": 8, "small_batch": 2, "image_size": 8, "width": 4, "depth": 2},
        "transformer": {
            "batch": 4,
            "small_batch": 1,
            "vocab": 11,
            "width": 8,
            "depth": 1,
            "seq": 5,
        },
    },
    "default": {
        "mlp": {"batch": 256, "small_batch": 8, "in_features": 784, "width": 256, "depth": 2},
        "cnn": {"batch": 64, "small_batch": 4, "image_size": 28, "width": 16, "depth": 2},
        "transformer": {
            "batch": 16,
            "small_batch": 1,
            "vocab": 64,
            "width": 64,
            "depth": 2,
            "seq": 32,
        },
    },
    # GPT-2 small: 12 layers, d_model 768, vocab 50257 (~124M parameters), for a GPU.
    "gpt2": {
        "transformer": {
            "batch": 8,
            "small_batch": 0,
            "vocab": 50257,
            "width": 768,
            "depth": 12,
            "seq": 128,
            "heads": 12,
        },
    },
}


@dataclass
class Case:
    arch: str
    model: FunctionalModel
    inputs: Tensor
    small_inputs: Tensor | None


def build_case(arch: str, size: dict[str, Any], dtype: torch.dtype, device: str) -> Case:
    """A model and a batch of distillation inputs for one benchmark architecture."""
    torch.manual_seed(0)
    if arch == "transformer":
        module: nn.Module = TinyTransformer(
            size["vocab"],
            size["width"],
            size.get("heads", 2),
            size["depth"],
            size["seq"],
            pool="none",
        )
        inputs = torch.randint(0, size["vocab"], (size["batch"], size["seq"]))
    elif arch == "mlp":
        module = MLP(size["in_features"], [size["width"]] * size["depth"], 10, "relu")
        inputs = make_inputs("mlp", size["batch"], in_features=size["in_features"], dtype=dtype)
    elif arch == "cnn":
        module = build_model("cnn", 10, width=size["width"], depth=size["depth"], dtype=dtype)
        inputs = make_inputs("cnn", size["batch"], image_size=size["image_size"], dtype=dtype)
    else:
        raise InputError(f"unknown benchmark architecture '{arch}'; choose mlp, cnn or transformer")
    module = module.to(device=device, dtype=dtype).eval()
    inputs = inputs.to(device)
    small = inputs[: size["small_batch"]] if size["small_batch"] else None
    return Case(arch, FunctionalModel(module), inputs, small)


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a clock reads finished work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_paths(
    paths: dict[str, Callable[[], Any]],
    device: str,
    min_seconds: float = 1.0,
    min_repeats: int = 7,
    warmups: int = 2,
) -> dict[str, float]:
    """Median wall time of each path, measured round-robin.

    Interleaving keeps the ratios between paths from being skewed by the machine getting
    faster or slower during the run.

    ``warmups`` calls per path first (default two); then rounds (every path once per round)
    until each path has >= ``min_repeats`` samples and the rounds took >= ``min_seconds`` (at
    most 200 rounds).
    """
    for fn in paths.values():
        for _ in range(warmups):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    total, rounds = 0.0, 0
    while rounds < min_repeats or (total < min_seconds and rounds < 200):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            samples[name].append(elapsed)
            total += elapsed
        rounds += 1
    return {name: statistics.median(times) for name, times in samples.items()}


def _peak_memory_mb(fn: Callable[[], Any], device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated() / 2**20


class _FlatOutputs(nn.Module):
    """(N, T, k) outputs as (N*T, k) rows, the shape CrossEntropyLoss takes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x)
        return out.reshape(-1, out.shape[-1])


def curvlinops_matvec(case: Case, v: Tensor) -> Callable[[], Any] | None:
    """Curvlinops' GGN matvec for softmax cross-entropy on the same batch, or None if absent."""
    try:
        from curvlinops import GGNLinearOperator
    except ImportError:
        return None
    module = _FlatOutputs(case.model.module)
    params = [p for p in module.parameters() if p.requires_grad]
    with torch.no_grad():
        labels = module(case.inputs).argmax(-1)  # the CE Hessian in z does not depend on labels

    operator = GGNLinearOperator(
        module,
        nn.CrossEntropyLoss(),
        params,
        [(case.inputs, labels)],
        check_deterministic=False,
    )
    pieces = [c.reshape(p.shape) for c, p in zip(torch.split(v, case.model.sizes), params)]
    try:
        operator @ pieces
        return lambda: operator @ pieces
    except (TypeError, ValueError, RuntimeError):
        flat = v.detach().cpu().numpy()
        return lambda: operator @ flat


def alignment_paths(
    model: FunctionalModel, inputs: Tensor, loss: ImitationLoss, prefix: str = ""
) -> tuple[Tensor, Tensor, Tensor, dict[str, Callable[[], Any]]]:
    """The engine's paths on one batch, each a call to time, and what they are evaluated at.

    theta is the model's parameters, v a fixed Gaussian direction (seed 1), the targets the
    teacher theta + 1e-3 v's outputs. The paths: ``gradient`` (``student_update_kernel``),
    ``gradient_module`` (the same gradient by plain autograd on the module), ``first_order``
    (A), ``gauss_newton`` (K v) and ``report`` (``alignment_report``), each name after
    ``prefix``.

    Args:
        model: the network.
        inputs: the batch.
        loss: the imitation loss.
        prefix: put before every path's name (``real_`` for the real model's rows).

    Returns:
        ``(theta, v, targets, {name: path})``.

    """
    theta = model.flat_params()
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    v = v.to(theta.device)
    with torch.no_grad():
        targets = model(theta + 1e-3 * v, inputs)

    parameters = [p for p in model.module.parameters() if p.requires_grad]

    def module_gradient() -> tuple[Tensor, ...]:
        value = loss.value(model.module(inputs), targets).mean()
        return torch.autograd.grad(value, parameters)

    paths: dict[str, Callable[[], Any]] = {
        "gradient": lambda: student_update_kernel(model, theta, inputs, targets, loss),
        "gradient_module": module_gradient,
        "first_order": lambda: first_order_kernel(model, theta, inputs, loss, v),
        "gauss_newton": lambda: gauss_newton_kernel(model, theta, inputs, loss, v),
        "report": lambda: alignment_report(
            model, v, inputs, loss, 1e-3, theta0=theta, noise_floor=False
        ),
    }
    return theta, v, targets, {prefix + name: path for name, path in paths.items()}


def bench_case(case: Case, device: str) -> list[dict[str, Any]]:
    """Time every path on one case; ratios are to the student gradient on the same batch."""
    model, inputs, loss = case.model, case.inputs, SoftCrossEntropy()
    theta, v, targets, paths = alignment_paths(model, inputs, loss)
    curvlinops = curvlinops_matvec(case, v)
    if curvlinops is not None:
        paths["curvlinops_ggn"] = curvlinops

    rows = []
    base = {
        "arch": case.arch,
        "dtype": str(theta.dtype).replace("torch.", ""),
        "device": device,
        "num_params": model.num_params,
        "batch": int(inputs.shape[0]),
        "load": load_average(),
    }
    seconds = time_paths(paths, device)
    for name, fn in paths.items():
        rows.append(
            {
                **base,
                "path": name,
                "seconds": seconds[name],
                "ratio": seconds[name] / seconds["gradient"],
                "baseline": "gradient",
                "peak_memory_mb": _peak_memory_mb(fn, device),
            }
        )
    if curvlinops is not None:
        rows.append(
            {
                **base,
                "path": "gauss_newton_vs_curvlinops",
                "seconds": seconds["gauss_newton"],
                "ratio": seconds["gauss_newton"] / seconds["curvlinops_ggn"],
                "baseline": "curvlinops_ggn",
                "peak_memory_mb": None,
            }
        )

    if case.small_inputs is not None:
        small, small_targets = case.small_inputs, targets[: case.small_inputs.shape[0]]

        def explicit() -> Tensor:
            return reference.explicit_gauss_newton_product(model, theta, small, loss, v, 256)

        small_seconds = time_paths(
            {
                "gradient": lambda: student_update_kernel(model, theta, small, small_targets, loss),
                "explicit": explicit,
            },
            device,
            min_seconds=0.0,
            min_repeats=3,
        )
        gradient_small, explicit_seconds = small_seconds["gradient"], small_seconds["explicit"]
        rows.append(
            {
                **base,
                "batch": int(small.shape[0]),
                "path": "explicit_jacobian",
                "seconds": explicit_seconds,
                "ratio": explicit_seconds / gradient_small,
                "baseline": "gradient (same small batch)",
                "peak_memory_mb": None,
            }
        )
    return rows


def bench_seeds(
    n_seeds: int, device: str, dtype: torch.dtype, width: int = 32, batch: int = 64
) -> list[dict[str, Any]]:
    """A and K v for ``n_seeds`` stacked inits of a small MLP: vmap vs a Python loop."""
    load = load_average()
    modules = [MLP(16, [width, width], 10, "tanh") for _ in range(n_seeds)]
    model = FunctionalModel(modules[0].to(device=device, dtype=dtype).eval())
    thetas = torch.stack(
        [FunctionalModel(m.to(device=device, dtype=dtype)).flat_params() for m in modules]
    )
    directions = torch.randn(thetas.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    directions = directions.to(device)
    inputs = make_inputs("mlp", batch, in_features=16, dtype=dtype).to(device)
    loss = SoftCrossEntropy()

    def measure(theta: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return first_order_kernel(model, theta, inputs, loss, v), gauss_newton_kernel(
            model, theta, inputs, loss, v
        )

    batched = torch.func.vmap(measure)

    def loop() -> list[tuple[Tensor, Tensor]]:
        return [measure(t, v) for t, v in zip(thetas, directions)]

    timed = time_paths({"vmap": lambda: batched(thetas, directions), "loop": loop}, device)
    vmap_seconds, loop_seconds = timed["vmap"], timed["loop"]
    base = {
        "load": load,
        "arch": "mlp(16-32-32-10)",
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "num_params": model.num_params,
        "batch": batch,
        "peak_memory_mb": None,
    }
    return [
        {
            **base,
            "path": f"seeds_vmap[{n_seeds}]",
            "seconds": vmap_seconds,
            "ratio": 1.0,
            "baseline": "itself",
        },
        {
            **base,
            "path": "seeds_loop_over_vmap",
            "seconds": loop_seconds,
            "ratio": loop_seconds / vmap_seconds,
            "baseline": "seeds_vmap",
        },
    ]


def bench_mnist_training(
    device: str, n_models: int = 10, batch: int = 1024, hidden: tuple[int, ...] = (256, 256)
) -> list[dict[str, Any]]:
    """One aux-only distillation step of the MNIST reproduction for N models: batched vs a loop.

    Ours: the experiment's own step (stacked parameters, batched matmuls, one Adam). Baseline:
    the same N models as separate ``nn.Module`` MLPs, each with its own Adam, in a Python loop
    (plain autograd). Both compute the same KL on the same noise images.
    """
    from sublim_theory.studies.mnist.experiment import (
        MnistConfig,
        distillation_loss,
        forward,
        reference_init,
        stack,
    )

    load = load_average()
    config = MnistConfig(models=n_models, hidden=hidden)
    references = [reference_init(config, i) for i in range(n_models)]
    teacher = [p.to(device) for p in stack(references)]
    images = (
        2 * torch.rand(n_models, batch, 784, generator=torch.Generator().manual_seed(3)) - 1
    ).to(device)
    with torch.no_grad():
        teacher_aux = forward(teacher, images)[..., 10:]
    params = [p.clone().requires_grad_(True) for p in teacher]
    optimizer = torch.optim.Adam(params, lr=config.lr)

    def batched_step() -> None:
        loss = distillation_loss(forward(params, images)[..., 10:], teacher_aux, 1.0).sum()
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()

    modules = []
    for init in references:
        module = MLP(784, list(hidden), 13, "relu").to(device)
        with torch.no_grad():
            for parameter, value in zip(module.parameters(), init):
                parameter.copy_(value)
        modules.append((module, torch.optim.Adam(module.parameters(), lr=config.lr)))

    def loop_step() -> None:
        for i, (module, module_optimizer) in enumerate(modules):
            loss = distillation_loss(module(images[i])[..., 10:], teacher_aux[i], 1.0)
            module_optimizer.zero_grad(set_to_none=False)
            loss.backward()
            module_optimizer.step()

    timed = time_paths({"batched": batched_step, "loop": loop_step}, device)
    ours, loop = timed["batched"], timed["loop"]
    base = {
        "load": load,
        "arch": f"mnist-mlp x{n_models}",
        "dtype": "float32",
        "device": device,
        "num_params": sum(p[0].numel() for p in params) * n_models,
        "batch": batch,
        "peak_memory_mb": None,
    }
    return [
        {**base, "path": "mnist_step_loop", "seconds": loop, "ratio": 1.0, "baseline": "itself"},
        {
            **base,
            "path": "mnist_step_batched",
            "seconds": ours,
            "ratio": ours / loop,
            "baseline": "mnist_step_loop",
        },
    ]


def _one_run(
    size: str,
    device: str,
    dtypes: tuple[str, ...],
    archs: tuple[str, ...],
    n_seeds: int,
    mnist_models: int,
    screen_traits: tuple[int, ...] = (),
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in dtypes:
        dtype = DTYPES[name]
        for arch in archs:
            if arch not in SIZES[size]:
                continue
            case = build_case(arch, SIZES[size][arch], dtype, device)
            rows += bench_case(case, device)
            print(f"  {arch} {name}: done", file=sys.stderr)
        if n_seeds > 0:
            rows += bench_seeds(n_seeds, device, dtype)
    if mnist_models > 0:
        rows += bench_mnist_training(
            device,
            mnist_models,
            64 if size == "tiny" else 1024,
            (16, 16) if size == "tiny" else (256, 256),
        )
    if screen_traits:
        from sublim_theory.studies.bench.screen import bench_screen

        rows += bench_screen(size, device, screen_traits)
        print("  screen: done", file=sys.stderr)
    return rows


def run_benchmarks(
    out_dir: str | Path,
    size: str = "default",
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("float32", "float64"),
    archs: tuple[str, ...] = ("mlp", "cnn", "transformer"),
    n_seeds: int = 32,
    mnist_models: int = 10,
    runs: int = 2,
    threads: int = 0,
    screen_traits: tuple[int, ...] = (),
) -> list[Path]:
    """Run every benchmark ``runs`` times; write bench.json, environment.json and bench.md.

    The runs follow one another (each one round-robin inside); bench.json keeps every run's rows
    and the combined verdicts, bench.md shows each run's ratio and the verdict over all runs.
    ``threads`` > 0 sets torch's CPU threads for the run (1 is steadier on a loaded machine,
    where a second thread waits on a descheduled one); 0 keeps torch's default.
    ``screen_traits``: the K of the screen rows (``studies.bench.screen``); empty skips them.

    Every argument and the output folder (created, probed, locked: ``runs.OutputFolder``) are
    checked before the first benchmark runs; the files are written atomically.

    Returns:
        The paths of bench.json, environment.json and bench.md.

    Raises:
        InputError: for an unknown size, device, dtype or architecture, a negative count, or
            an output folder that cannot be written.

    """
    if size not in SIZES:
        raise InputError(f"unknown benchmark size '{size}'; choose one of {sorted(SIZES)}")
    unknown = [name for name in dtypes if name not in DTYPES] + [
        arch for arch in archs if arch not in ("mlp", "cnn", "transformer")
    ]
    if unknown:
        raise InputError(f"unknown dtype or architecture {unknown}")
    if n_seeds < 0 or mnist_models < 0:
        raise InputError("--seeds and --mnist-models must be >= 0 (0 skips that benchmark)")
    if runs < 1:
        raise InputError(f"--runs must be >= 1, got {runs}")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in screen_traits):
        raise InputError(f"--screen-traits must be integers >= 1, got {list(screen_traits)}")
    if threads < 0:
        raise InputError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    device = resolve_device(device).type  # "cpu" or "cuda"; refuses CUDA when there is none
    with OutputFolder(out_dir, "bench") as folder:
        rows: list[dict[str, Any]] = []
        default_threads = torch.get_num_threads()
        torch.set_num_threads(threads or default_threads)
        try:
            for run in range(1, runs + 1):
                rows += [
                    {**row, "run": run}
                    for row in _one_run(
                        size, device, dtypes, archs, n_seeds, mnist_models, tuple(screen_traits)
                    )
                ]
            env = environment_record(device)  # records torch_threads as used
        finally:
            torch.set_num_threads(default_threads)
        paths = [folder.path / name for name in ("bench.json", "environment.json", "bench.md")]
        record = {"rows": rows, "verdicts": verdicts(rows), "combined": combine_runs(rows)}
        atomic_write_json(paths[0], record)
        atomic_write_json(paths[1], env)
        atomic_write_text(paths[2], markdown(rows, env))
    return paths
