"""The batched measurement of one configuration: the engine's kernels vmapped over seeds.

Per seed (theory/alignment.md sections 2-5) the sweep measures

* the engine's one-step report: the exact update dtheta_S at theta_S0, the first-order
  prediction K(eps v - Delta) (Delta = theta_S0 - theta_0, K = E_x[J^T M J] at theta_0), their
  cosines with the teacher's direction v, the Taylor residual, A and B (one nested jvp), eps* and
  the teacher-loss changes -- every scalar by the engine's own ``dot``/``norm``/``cosine``/
  ``critical_step``, exactly as ``alignment_report`` forms it;
* the pieces of the init-distance analysis: ||K v||, ||K Delta||, cos(K v, v) and
  delta / delta_c = ||K Delta|| / (eps ||K v||); and the first-order prediction with Delta
  replaced by its mean E[Delta | theta_0] (``placements.expected_offset``);
* multi-step trajectories (SGD and Adam, ``sublim_theory.engine.trajectories``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad

from sublim_theory.engine.alignment import (
    cosine,
    dot,
    gauss_newton_kernel,
    norm,
    student_update_kernel,
    taylor_kernel,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss, make_loss
from sublim_theory.engine.placements import INDEPENDENT_PLACEMENTS
from sublim_theory.engine.report import critical_step, update_statistics
from sublim_theory.engine.trajectories import map_over_seeds, student_trajectory
from sublim_theory.studies.init_distance.config import wants_trajectory
from sublim_theory.testbeds.zoo import prepare_configuration

__all__ = [
    "one_step_function",
    "run_configuration",
    "run_over_seeds",
    "seed_statistics",
    "teacher_cross_entropy",
]


def teacher_cross_entropy(outputs: Tensor, labels: Tensor) -> Tensor:
    """The trait L_T: cross-entropy of the outputs against fixed random labels (as ``check``)."""
    return F.cross_entropy(outputs, labels)


def one_step_function(
    model: FunctionalModel,
    loss: ImitationLoss,
    eps: float,
    student_lr: float,
    with_expected_offset: bool,
) -> Callable[..., dict[str, Tensor]]:
    """The per-seed one-step measurement, a pure function of tensors (vmap-able).

    ``(theta_0, theta_S0, E[Delta], x_student, x_teacher, labels) ->`` v = -grad L_T(theta_0),
    the targets y = f(theta_0 + eps v, x), the exact update at theta_S0, K v, K Delta,
    K E[Delta] (zero unless ``with_expected_offset``), [A, B], grad L_T(theta_S0) and the teacher
    losses L_T(theta_S0), L_T(theta_S0 + alpha dtheta_S). All from the engine's kernels.

    Returns:
        The function.

    """

    def teacher_objective(theta: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return teacher_cross_entropy(model(theta, x), labels)

    def measure(
        theta0: Tensor,
        theta_s0: Tensor,
        mean_offset: Tensor,
        x_student: Tensor,
        x_teacher: Tensor,
        labels: Tensor,
    ) -> dict[str, Tensor]:
        v = -grad(teacher_objective)(theta0, x_teacher, labels)
        targets = model(theta0 + eps * v, x_student).detach()
        exact = student_update_kernel(model, theta_s0, x_student, targets, loss)
        k_v = gauss_newton_kernel(model, theta0, x_student, loss, v)
        k_delta = gauss_newton_kernel(model, theta0, x_student, loss, theta_s0 - theta0)
        k_mean = (
            gauss_newton_kernel(model, theta0, x_student, loss, mean_offset)
            if with_expected_offset
            else torch.zeros_like(k_v)
        )
        return {
            "v": v,
            "targets": targets,
            "exact": exact,
            "k_v": k_v,
            "k_delta": k_delta,
            "k_mean_offset": k_mean,
            "taylor": taylor_kernel(model, theta0, x_student, loss, v),
            "teacher_gradient": grad(teacher_objective)(theta_s0, x_teacher, labels),
            "teacher_loss_start": teacher_objective(theta_s0, x_teacher, labels),
            "teacher_loss_stepped": teacher_objective(
                theta_s0 + student_lr * exact, x_teacher, labels
            ),
        }

    return measure


def run_over_seeds(
    function: Callable[..., dict[str, Tensor]],
    arguments: tuple[Tensor, ...],
    prefer_vmap: bool,
    label: str,
) -> tuple[dict[str, Tensor], str]:
    """Run with vmap; where vmap cannot trace the module, say so and loop over seeds instead."""
    if prefer_vmap:
        try:
            return map_over_seeds(function, True)(*arguments), "vmap"
        except Exception as error:  # noqa: BLE001 - any vmap failure means: use the loop
            text = str(error).strip()
            first = text.splitlines()[0] if text else type(error).__name__
            warnings.warn(f"{label}: vmap failed ({first[:200]}); looping over seeds", stacklevel=2)
    return map_over_seeds(function, False)(*arguments), "loop"


def seed_statistics(
    step: dict[str, Tensor],
    i: int,
    theta0: Tensor,
    theta_s0: Tensor,
    eps: float,
    student_lr: float,
) -> dict[str, float]:
    """The scalars of seed ``i``: the report's columns from the report's own ``update_statistics``.

    first = K(eps v - Delta) (= eps K v - K Delta); A, B from one nested jvp; eps* =
    ``critical_step(A, B)``; the expected-offset prediction K(eps v - E[Delta]).

    Returns:
        The columns by name.

    """
    v, exact = step["v"][i], step["exact"][i]
    k_v, k_delta, k_mean = step["k_v"][i], step["k_delta"][i], step["k_mean_offset"][i]
    first = eps * k_v.double() - k_delta.double()
    expected = eps * k_v.double() - k_mean.double()
    a, b = (float(x) for x in step["taylor"][i])
    norm_k_v, norm_k_delta = norm(k_v), norm(k_delta)
    start = float(step["teacher_loss_start"][i].double())
    stepped = float(step["teacher_loss_stepped"][i].double())
    shared = update_statistics(exact, first, v, theta0[i], theta_s0[i])
    return {
        **shared,
        "delta_over_eps": shared["init_distance_abs"] / eps,
        "A": a,
        "B": b,
        "eps_star": critical_step(a, b),
        "teacher_loss_change_exact": stepped - start,
        "teacher_loss_change_first_order": student_lr * dot(step["teacher_gradient"][i], first),
        "norm_K_v": norm_k_v,
        "norm_K_delta": norm_k_delta,
        "cos_K_v_teacher": cosine(k_v, v),
        "delta_over_delta_c": norm_k_delta / (eps * norm_k_v) if norm_k_v > 0 else float("nan"),
        "inner_mean_offset": -dot(k_mean, v),
        "inner_first_order_expected": dot(expected, v),
        "cos_first_order_expected": cosine(expected, v),
    }


def run_configuration(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Measure one configuration for all its seeds; return its rows (a list of plain dicts).

    Pure and deterministic: everything is seeded from the job, so any process, in any order,
    returns the same rows.

    Returns:
        The rows.

    """
    arch, kind, scale, eps = job["arch"], job["placement"], job["scale"], job["eps"]
    seeds, measure, trajectory = job["seeds"], job["measure"], job["trajectory"]
    problem = prepare_configuration(job)
    model, theta0, theta_s0 = problem.model, problem.theta0, problem.theta_student
    loss = make_loss(measure["loss"])
    measure_fn = one_step_function(
        model, loss, eps, measure["student_lr"], kind in INDEPENDENT_PLACEMENTS
    )
    step, batching = run_over_seeds(
        measure_fn,
        (
            theta0,
            theta_s0,
            problem.expected_offset,
            problem.x_student,
            problem.x_teacher,
            problem.labels,
        ),
        measure["batching"] == "vmap",
        label=job["key"],
    )
    base = {
        "key": job["key"],
        "arch": arch,
        "placement": kind,
        "scale": scale,
        "eps": eps,
        "dtype": measure["dtype"],
        "loss": loss.describe(),
        "num_params": model.num_params,
        "batching": batching,
    }
    statistics = [
        seed_statistics(step, i, theta0, theta_s0, eps, measure["student_lr"])
        for i in range(len(seeds))
    ]
    rows = [
        {**base, "seed": s, "measurement": "one_step", "step": 1, "lr": measure["student_lr"]}
        | statistics[i]
        for i, s in enumerate(seeds)
    ]
    if not wants_trajectory(trajectory, kind, eps):
        return rows
    distance_columns = ("init_distance_abs", "init_distance_rel", "delta_over_eps")
    for optimizer in trajectory["optimizers"]:
        lr = trajectory[f"{optimizer}_lr"]
        records = student_trajectory(
            model,
            loss,
            theta_s0,
            problem.x_student,
            step["targets"],
            step["v"],
            teacher_cross_entropy,
            problem.x_teacher,
            problem.labels,
            optimizer,
            lr,
            trajectory["steps"],
            use_vmap=batching == "vmap",
        )
        for i, s in enumerate(seeds):
            distances = {k: statistics[i][k] for k in distance_columns}
            for t in range(trajectory["steps"] + 1):
                row = {**base, "seed": s, "measurement": optimizer, "step": t, "lr": lr}
                row.update(distances)
                row.update({k: float(values[i, t]) for k, values in records.items()})
                rows.append(row)
    return rows
