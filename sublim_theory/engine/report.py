"""The one-step alignment report: every term of the theorem for one teacher step, and eps*.

``alignment_report`` measures one distillation step against the teacher's direction and the
theorem's predictions (theory/alignment.md sections 2-5), sharing its passes: one forward that
carries J v, reused by the backward passes for the exact update, K(eps v) and B. eps* and
its check live in :mod:`sublim_theory.engine.critical_step` (re-exported here); the kernels and the
single-quantity functions it is checked against live in :mod:`sublim_theory.engine.alignment`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor
from torch.func import jvp

from sublim_theory.engine.alignment import (
    TeacherTask,
    batch_chunks,
    batched_norm,
    check_finite,
    checked_problem,
    distillation_targets,
    dot,
    dual_forward,
    gauss_newton_kernel,
    gauss_newton_product,
    model_outputs,
    norm,
    output_positions,
    student_update,
    student_update_kernel,
    taylor_kernel,
)
from sublim_theory.engine.critical_step import (
    EPS_STAR_TOLERANCE,
    CriticalStepCheck,
    critical_step,
    critical_step_check,
    judge_critical_step,
)
from sublim_theory.engine.forward_ad import explicit_normalization
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss
from sublim_theory.engine.rule_report import RuleReport, StudentGradients, report_rule
from sublim_theory.engine.update_rules import State, UpdateRule
from sublim_theory.errors import InputError

__all__ = [
    "update_statistics",
    "EPS_STAR_TOLERANCE",
    "AlignmentReport",
    "CriticalStepCheck",
    "alignment_report",
    "critical_step",
    "critical_step_check",
]


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
@dataclass
class AlignmentReport:
    """One-step alignment between the teacher's direction v and the student's distillation update.

    Keys (all floats unless noted; JSON writes inf/NaN as null):
        eps, student_lr: the teacher step and the student's step size alpha.
        num_params, num_inputs (int), dtype, loss (str).
        init_distance_abs, init_distance_rel: ||theta_S0 - theta_0|| and that over ||theta_0||.
        inner_exact: <dtheta_S, v> for the exact update.
        inner_first_order: <K(eps v - Delta), v>  (= eps A at the shared init).
        inner_second_order: eps A + eps^2 B (the shared-init expansion).
        cos_exact_teacher, cos_first_order_teacher, cos_exact_first_order: cosines of the
            exact update, the first-order prediction, and the teacher direction.
        norm_exact, norm_first_order, norm_teacher: Euclidean norms.
        taylor_residual: ||exact - first order|| / ||exact||.
        A, B: theory/alignment.md section 4 (shared init): <dtheta_S, v> = eps A + eps^2 B + O(eps^3).
        eps_star: A/|B|, the root of the truncated quadratic eps A + eps^2 B when B < 0; inf
            (JSON null) when B >= 0, which is no guarantee for large eps.
        eps_star_residual: phi(eps*) / (eps* A) with phi the exact alignment at the shared
            init: the estimated relative error of eps* as phi's sign change (NaN: no eps*).
        eps_star_trusted (bool): |eps_star_residual| <= EPS_STAR_TOLERANCE (0.1).
        eps_star_note (str): one line saying which case applies.
        teacher_loss_change_exact: L_T(theta_S0 + alpha dtheta_S) - L_T(theta_S0) (needs a teacher task).
        teacher_loss_change_first_order: alpha <grad L_T(theta_S0), K(eps v - Delta)>.
        cosine_noise_floor: for float32 models, ||dtheta_S(float32) - dtheta_S(float64)|| /
            ||dtheta_S(float64)||: cosines closer than this are not resolved. Computed only
            when asked (``alignment_report(..., noise_floor=True)``); None otherwise and in
            float64.
    """

    eps: float
    student_lr: float
    num_params: int
    num_inputs: int
    dtype: str
    loss: str
    init_distance_abs: float
    init_distance_rel: float
    inner_exact: float
    inner_first_order: float
    inner_second_order: float
    cos_exact_teacher: float
    cos_first_order_teacher: float
    cos_exact_first_order: float
    norm_exact: float
    norm_first_order: float
    norm_teacher: float
    taylor_residual: float
    A: float
    B: float
    eps_star: float
    eps_star_residual: float
    eps_star_trusted: bool
    eps_star_note: str
    teacher_loss_change_exact: float | None
    teacher_loss_change_first_order: float | None
    cosine_noise_floor: float | None
    rule: RuleReport | None = field(default=None, repr=False)  # alignment_report(rule=...)

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Plain dict with non-finite floats as None (valid JSON); ``rule_*`` keys with a rule."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rule"}
        values |= {f"rule_{k}": x for k, x in self.rule.to_dict().items()} if self.rule else {}
        return {
            k: (None if isinstance(x, float) and not math.isfinite(x) else x)
            for k, x in values.items()
        }


def _float64_update(
    model: FunctionalModel,
    theta_student: Tensor,
    theta_teacher: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    batch_size: int | None,
) -> Tensor | None:
    """The exact update recomputed on a float64 copy of the module (for the noise floor)."""
    try:
        double = FunctionalModel(copy.deepcopy(model.module).double())
    except (RuntimeError, TypeError, InputError):
        return None
    x = inputs.double() if inputs.is_floating_point() else inputs
    targets = distillation_targets(double, theta_teacher.double(), x, batch_size)
    return student_update(double, theta_student.double(), x, targets, loss, batch_size)


def _softmax(x: Tensor, dim: int, dtype: torch.dtype | None = None) -> Tensor:
    """Softmax from elementary ops (shifted by the max, which leaves it unchanged)."""
    if dtype is not None:
        x = x.to(dtype)
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


class _explicit_softmax(explicit_normalization):  # noqa: N801 (used as a context manager)
    """Layer/instance norm (``explicit_normalization``) and softmax from elementary ops.

    Reverse mode through the forward derivative of torch's fused softmax fails (that derivative
    overwrites a tensor the backward saved); through exp and sum it is exact. One mode for both
    replacements: every op of the forward passes through one Python hook, not two.
    """

    _FUNCS = (torch.softmax, torch.nn.functional.softmax, Tensor.softmax)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        if func in self._FUNCS:
            kwargs = kwargs or {}
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(dim, int):
                return _softmax(args[0], dim, kwargs.get("dtype"))
        return super().__torch_function__(func, types, args, kwargs)


@dataclass
class _Chunk:
    """What one chunk of the report's inputs gives at theta_0 (see :func:`_report_kernel`)."""

    outputs: Tensor  # z0 = f(theta_0, x), detached
    tangent: Tensor  # u = J v, detached
    coefficients: Tensor  # float64 [A, B] over this chunk
    exact: Tensor | None  # -grad L_S(theta_0), when the student starts at theta_0
    first: Tensor | None  # K (eps v), when the student starts at theta_0


def _report_kernel(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    targets: Tensor | None,
    eps: float,
) -> _Chunk:
    """A, B, and (given the targets) the exact update and K (eps v) on one batch, sharing work.

    One forward pass carries the tangent v (dual numbers), giving z0 and u = J v, and is recorded
    for reverse mode. Reverse passes then give the exact update J^T (-grad_z L) and the
    first-order update J^T M (eps u) / n from z0, and H_c v = D(J^T c)[v] from u with c = M u,
    so that u^T M w = <c, D^2 f[v, v]> = <v, H_c v> (reverse over forward: no second forward).
    The same quantities as :func:`taylor_kernel`, :func:`student_update_kernel` and
    :func:`gauss_newton_kernel` (with q = eps v), up to rounding.

    Returns:
        z0 and u (detached), [A, B] over this batch, and the exact and first-order updates
        (None when ``targets`` is None).

    """
    t = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        with _explicit_softmax():
            z0, u = dual_forward(model, t, inputs, v)
        positions = output_positions(z0)
        outputs, tangent = z0.detach(), u.detach()
        curvature = loss.hessian_vector_product(outputs, tangent)
        u64 = tangent.double()
        a = (u64 * curvature.double()).sum()
        b = -(u64 * loss.target_curvature(outputs, tangent).double()).sum()
        exact = first = None
        if targets is not None:
            leaf = outputs.clone().requires_grad_(True)
            (output_gradient,) = torch.autograd.grad(loss.value(leaf, targets).mean(), leaf)
            (exact,) = torch.autograd.grad(z0, t, -output_gradient, retain_graph=True)
            (first,) = torch.autograd.grad(z0, t, eps * curvature, retain_graph=True)
            first = first / positions
        if u.requires_grad:
            (mixed,) = torch.autograd.grad(u, t, curvature, allow_unused=True)
            if mixed is not None:  # None: u does not depend on theta (f linear in theta)
                b = b + (mixed.double() * v.double()).sum()
    return _Chunk(outputs, tangent, torch.stack([a, 0.5 * b]) / positions, exact, first)


def _report_kernel_nested(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    targets: Tensor | None,
    eps: float,
) -> _Chunk:
    """:func:`_report_kernel` from the separate kernels (for models reverse mode cannot cross)."""
    z0, u = jvp(model.as_function(inputs), (theta,), (v,))
    coefficients = taylor_kernel(model, theta, inputs, loss, v)
    exact = first = None
    if targets is not None:
        exact = student_update_kernel(model, theta, inputs, targets, loss)
        first = gauss_newton_kernel(model, theta, inputs, loss, eps * v)
    return _Chunk(z0.detach(), u.detach(), coefficients, exact, first)


@dataclass
class _Shared:
    """The report's per-input work at theta_0, accumulated over chunks."""

    coefficients: tuple[float, float]
    exact: Tensor | None
    first: Tensor | None
    chunks: list[tuple[slice, Tensor, Tensor]]  # (inputs, z0, u) per chunk, for phi(eps*)


def _shared_pass(
    model: FunctionalModel,
    theta0: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    targets: Tensor | None,
    eps: float,
    batch_size: int | None,
) -> _Shared:
    """Run :func:`_report_kernel` on every chunk and average as :func:`_accumulate` does."""
    kernel = _report_kernel
    totals: dict[str, Tensor] = {}
    chunks, count = [], 0
    for s in batch_chunks(inputs, batch_size):
        y = None if targets is None else targets[s]
        try:
            part = kernel(model, theta0, inputs[s], loss, v, y, eps)
        except RuntimeError:
            # an operator whose forward derivative reverse mode cannot cross: separate passes
            kernel = _report_kernel_nested
            part = kernel(model, theta0, inputs[s], loss, v, y, eps)
        n = s.stop - s.start
        for name in ("coefficients", "exact", "first"):
            value = getattr(part, name)
            if value is not None:
                value = value.double() * n
                totals[name] = value if name not in totals else totals[name] + value
        chunks.append((s, part.outputs, part.tangent))
        count += n
    a, b = (totals["coefficients"] / count).tolist()
    exact, first = (
        (totals[k] / count).to(theta0.dtype) if k in totals else None for k in ("exact", "first")
    )
    return _Shared((a, b), exact, first, chunks)


def _exact_alignment_from(
    model: FunctionalModel,
    theta0: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    shared: _Shared,
) -> Callable[[float], float | None]:
    """phi(eps) = <dtheta_S(eps), v> at the shared init = -E_x[grad_z l(z0, y_eps)^T u].

    Reuses z0 and u = J v of the shared pass: one forward of the teacher per eps, no backward.

    Returns:
        eps -> phi(eps), or None when the teacher's outputs at eps overflow.

    """

    def exact_alignment(eps: float) -> float | None:
        theta_teacher = theta0 + eps * v
        total = torch.zeros((), dtype=torch.float64, device=theta0.device)
        for s, outputs, tangent in shared.chunks:
            with torch.no_grad():
                targets = model_outputs(model, theta_teacher, inputs[s])
            if not torch.isfinite(targets).all():
                return None
            leaf = outputs.clone().requires_grad_(True)
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(loss.value(leaf, targets).mean(), leaf)
            total = total - (gradient.double() * tangent.double()).sum() * (s.stop - s.start)
        return float(total) / int(inputs.shape[0])

    return exact_alignment


def update_statistics(
    exact: Tensor, first: Tensor, v: Tensor, theta0: Tensor, theta_s0: Tensor
) -> dict[str, float]:
    """The report's statistics of one student update, its first-order prediction and v.

    One implementation for :func:`alignment_report` and the sweep (which forms the vectors in
    batches over seeds): every reduction in float64 from one stacked copy of the three vectors.

    Args:
        exact: the exact update dtheta_S.
        first: the first-order prediction K(eps v - Delta).
        v: the teacher's direction.
        theta0: the shared init.
        theta_s0: the student's init (Delta = theta_s0 - theta0).

    Returns:
        ``init_distance_abs``, ``init_distance_rel``, ``inner_exact``, ``inner_first_order``,
        ``cos_exact_teacher``, ``cos_first_order_teacher``, ``cos_exact_first_order``,
        ``norm_exact``, ``norm_first_order``, ``norm_teacher`` and ``taylor_residual`` (the
        report's keys of the same names; NaN where a vector is exactly zero).

    """
    stacked = torch.stack([exact.reshape(-1), first.reshape(-1), v.reshape(-1)]).double()
    norm_exact, norm_first, norm_v = batched_norm(stacked).tolist()
    gram = (stacked @ stacked.T).tolist()  # one pass over the three vectors
    inner_exact, inner_first, inner_both = gram[0][2], gram[1][2], gram[0][1]

    def cos(inner: float, n1: float, n2: float) -> float:
        return inner / (n1 * n2) if n1 * n2 > 0 else math.nan

    distance = norm(theta_s0 - theta0)
    residual = float(batched_norm(stacked[0] - stacked[1]))
    return {
        "init_distance_abs": distance,
        "init_distance_rel": distance / max(norm(theta0), 1e-300),
        "inner_exact": inner_exact,
        "inner_first_order": inner_first,
        "cos_exact_teacher": cos(inner_exact, norm_exact, norm_v),
        "cos_first_order_teacher": cos(inner_first, norm_first, norm_v),
        "cos_exact_first_order": cos(inner_both, norm_exact, norm_first),
        "norm_exact": norm_exact,
        "norm_first_order": norm_first,
        "norm_teacher": norm_v,
        "taylor_residual": residual / norm_exact if norm_exact > 0 else math.nan,
    }


def alignment_report(
    model: FunctionalModel,
    direction: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    eps: float,
    *,
    theta0: Tensor | None = None,
    student_init: Tensor | None = None,
    teacher: TeacherTask | None = None,
    student_lr: float = 1.0,
    batch_size: int | None = None,
    noise_floor: bool = False,
    rule: UpdateRule | None = None,
    rule_state: State | None = None,
) -> AlignmentReport:
    """Measure one distillation step against the teacher's direction and the theorem's prediction.

    Cost at the shared init (``student_init`` None or equal to theta0), per chunk: one forward
    for the targets, one forward carrying u = J v (dual numbers) recorded for reverse mode, three
    reverse passes from it (the exact update, K (eps v), and <v, H_c v> for B), and one forward
    of the teacher at eps* when B < 0 (phi(eps*) = -E[grad_z l(z0, y_eps*)^T u] needs no
    backward). It keeps z0 and u of every chunk (twice the size of the targets) until eps* is
    known. Each key equals its stand-alone function's value up to rounding
    (tests/engine/test_engine_sharing.py). A different ``student_init`` adds one student gradient and
    one Gauss-Newton product at theta0.

    Args:
        model: the network (see :class:`FunctionalModel`).
        direction: v, the teacher's update (``TeacherTask.update``) or any direction.
        inputs: distillation inputs x ~ D_S, shape (N, ...).
        loss: the imitation loss l(z, y).
        eps: the teacher's step: theta_T = theta_0 + eps v; must be > 0.
        theta0: the shared init (default: the module's current parameters).
        student_init: theta_S0 (default: theta0, the theorem's setting).
        teacher: the trait task; enables the teacher-loss rows.
        student_lr: alpha, the student's step size for the teacher-loss change.
        batch_size: process inputs in chunks of this many samples.
        noise_floor: for float32 models, also compute the update on a float64 copy (the
            ``cosine_noise_floor`` key; about one more student gradient in float64). Off by
            default: the key is then None.
        rule: a student update rule: sets ``.rule`` to its
            :class:`sublim_theory.engine.rule_report.RuleReport` (``rule_*`` keys in to_dict).
        rule_state: the rule's state (default: fresh).

    Returns:
        An :class:`AlignmentReport` (its docstring and the README list every key).

    Raises:
        InputError: eps or student_lr not a finite number > 0, mis-shaped or non-finite
            inputs/vectors, teacher outputs that overflow, or a model in train mode.

    """
    if not (math.isfinite(student_lr) and student_lr > 0):
        raise InputError(f"student_lr must be a finite number > 0, got {student_lr}")
    theta0, theta_s0, v = checked_problem(
        model, direction, inputs, eps, theta0, student_init, batch_size
    )

    theta_teacher = theta0 + eps * v
    targets = distillation_targets(model, theta_teacher, inputs, batch_size)
    check_finite("teacher outputs", targets)
    offset = theta_s0 - theta0
    shared_init = student_init is None or bool(torch.equal(theta_s0, theta0))
    shared = _shared_pass(
        model, theta0, inputs, loss, v, targets if shared_init else None, eps, batch_size
    )
    if shared_init:
        exact, first = shared.exact, shared.first
    else:
        exact = student_update(model, theta_s0, inputs, targets, loss, batch_size)
        first = gauss_newton_product(model, theta0, inputs, loss, eps * v - offset, batch_size)
    a, b = shared.coefficients
    star = judge_critical_step(a, b, _exact_alignment_from(model, theta0, inputs, loss, v, shared))

    change_exact = change_first = None
    if teacher is not None:
        with torch.no_grad():
            base = float(teacher.loss(model, theta_s0).double())
            stepped = float(teacher.loss(model, theta_s0 + student_lr * exact).double())
        change_exact = stepped - base
        change_first = student_lr * dot(teacher.gradient(model, theta_s0), first)

    floor = None
    if model.dtype != torch.float64 and noise_floor:
        reference = _float64_update(model, theta_s0, theta_teacher, inputs, loss, batch_size)
        if reference is not None:
            floor = norm(exact.double() - reference) / max(norm(reference), 1e-300)

    rule_rows = None
    if rule is not None:  # the rule acts on this report's exact and first-order updates
        k_v = (
            first / eps
            if shared_init
            else gauss_newton_product(model, theta0, inputs, loss, v, batch_size)
        )
        control = torch.zeros_like(exact) if shared_init else None  # grad_z l(y, y) = 0
        gradients = StudentGradients(model, theta0, theta_s0, v, eps, -exact, -first, k_v, control)
        rule_rows = report_rule(gradients, rule, rule_state, teacher)
    return AlignmentReport(
        rule=rule_rows,
        eps=float(eps),
        student_lr=float(student_lr),
        num_params=model.num_params,
        num_inputs=int(inputs.shape[0]),
        dtype=str(model.dtype).replace("torch.", ""),
        loss=loss.describe(),
        **update_statistics(exact, first, v, theta0, theta_s0),
        inner_second_order=eps * a + eps**2 * b,
        A=a,
        B=b,
        eps_star=critical_step(a, b),
        eps_star_residual=star.residual,
        eps_star_trusted=star.trusted,
        eps_star_note=star.note,
        teacher_loss_change_exact=change_exact,
        teacher_loss_change_first_order=change_first,
        cosine_noise_floor=floor,
    )
