"""The alignment engine: teacher update, exact student update, and the theorem's predictions.

Notation (theory/alignment.md): f(theta, x) the network, theta_0 the shared init, v the teacher's
direction, theta_T = theta_0 + eps v the teacher, y(x) = f(theta_T, x) the distillation targets,
u = J v (one jvp), M the loss's output Hessian at z = y = z0, K = E_x[J^T M J] the Gauss-Newton
matrix at theta_0. Then

    dtheta_S = -grad_theta E_x[l(f(theta, x), y(x))] at theta_S0      (exact, one backward)
    dtheta_S ~= K (eps v - Delta),   Delta = theta_S0 - theta_0          (first order, jvp + vjp)
    <dtheta_S, v> = eps A + eps^2 B + O(eps^3)                           (shared init)
    A = E[u^T M u],  B = (1/2) E[u^T M w - u^T G[u, u]],  w = D^2 f[v, v]  (forward mode only)

Hypotheses (theory/alignment.md): the O(eps^2) remainder needs l in C^3 and f in C^2 near
theta_0; the O(eps^3) remainder needs l in C^4 and f in C^3. G[u, u] = d^2/ds^2 grad_z l(z0,
z0 + s u) at s = 0 is a mixed derivative (one z, two y), not D^3_z l. eps* = A/|B| is the root
of the truncated quadratic; ``critical_step_check`` evaluates the exact alignment there to say
whether the dropped cubic term is small.
E_x is the mean over every position: samples, and sequence positions for outputs (N, T, k).
The ``*_kernel`` functions compute one batch as pure tensor functions, so they compose with
``torch.func.vmap`` over stacked seeds; the public functions validate, chunk and accumulate.
Every reduction (sums over inputs, dot products, norms) is done in float64 whatever the model's
dtype; inputs can be processed in chunks of ``batch_size`` to bound memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor
from torch.func import jvp, vjp

from sublim_theory.engine.forward_ad import explicit_normalization
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss
from sublim_theory.errors import InputError

__all__ = [
    "TeacherLossFn",
    "TeacherTask",
    "batch_chunks",
    "batched_cosine",
    "batched_dot",
    "batched_norm",
    "check_finite",
    "check_vector",
    "checked_problem",
    "cosine",
    "distillation_targets",
    "dual_forward",
    "dot",
    "first_order_coefficient",
    "first_order_kernel",
    "gauss_newton_kernel",
    "gauss_newton_product",
    "imitation_objective",
    "model_outputs",
    "norm",
    "output_positions",
    "second_order_coefficient",
    "second_order_kernel",
    "student_update",
    "student_update_kernel",
    "taylor_coefficients",
    "taylor_kernel",
    "teacher_update",
]

TeacherLossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------
def batched_dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> along the last axis, in float64: shape (..., P) x (..., P) -> (...)."""
    return (a.double() * b.double()).sum(-1)


def batched_norm(a: Tensor) -> Tensor:
    """||a|| along the last axis, in float64: shape (..., P) -> (...)."""
    return torch.linalg.vector_norm(a.double(), dim=-1)


def batched_cosine(a: Tensor, b: Tensor) -> Tensor:
    """cos(a, b) along the last axis in float64; NaN where either vector is exactly zero."""
    denominator = batched_norm(a) * batched_norm(b)
    inner = batched_dot(a, b)
    return torch.where(denominator > 0, inner / denominator, torch.full_like(inner, math.nan))


def dot(a: Tensor, b: Tensor) -> float:
    """<a, b> of two tensors of any shape (flattened), accumulated in float64."""
    return float(batched_dot(a.reshape(-1), b.reshape(-1)))


def norm(a: Tensor) -> float:
    """||a|| of a tensor of any shape (flattened), accumulated in float64."""
    return float(batched_norm(a.reshape(-1)))


def cosine(a: Tensor, b: Tensor) -> float:
    """cos(a, b) in float64; NaN when either vector is exactly zero (the angle is undefined)."""
    return float(batched_cosine(a.reshape(-1), b.reshape(-1)))


def batch_chunks(inputs: Tensor, batch_size: int | None) -> Iterator[slice]:
    """Slices of the batch axis of ``inputs``, ``batch_size`` rows each (all at once if None)."""
    n = inputs.shape[0]
    step = n if batch_size is None else batch_size
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def output_positions(outputs: Tensor) -> int:
    """Number of positions a loss is averaged over: every axis but the last (the k outputs)."""
    return outputs.numel() // outputs.shape[-1]


def check_finite(name: str, t: Tensor) -> None:
    """Refuse a tensor with NaN or inf (one line naming it), instead of reporting from it."""
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or inf; clean the data or lower the step size")


def check_vector(model: FunctionalModel, name: str, vector: Tensor) -> None:
    """Refuse anything but a flat parameter-space vector of ``model`` (one line naming it)."""
    if not isinstance(vector, Tensor) or vector.ndim != 1 or vector.numel() != model.num_params:
        shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
        raise InputError(
            f"{name} has shape {shape}; expected a flat vector of {model.num_params} parameters "
            "(use FunctionalModel.flatten or .flat_params())"
        )
    check_finite(name, vector)


def _check_inputs(inputs: Tensor, batch_size: int | None) -> None:
    if not isinstance(inputs, Tensor) or inputs.ndim == 0 or inputs.shape[0] == 0:
        raise InputError("inputs must be a tensor with a non-empty leading batch axis")
    if inputs.is_floating_point():
        check_finite("inputs", inputs)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")


def checked_problem(
    model: FunctionalModel,
    direction: Tensor,
    inputs: Tensor,
    eps: float,
    theta0: Tensor | None,
    student_init: Tensor | None,
    batch_size: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Check one teacher-step problem and return (theta0, theta_S0, v), detached, v in theta0's dtype.

    The shared input checks of ``report.alignment_report`` and ``rule_report.student_gradients``:
    eps finite and > 0, non-empty finite inputs, float32 or float64 parameters (float16 and
    bfloat16 are refused), flat finite vectors of the model's size.
    ``theta0`` defaults to the module's parameters and ``student_init`` to ``theta0``.

    Returns:
        theta0, theta_S0 and v.

    Raises:
        InputError: one line naming the argument at fault.

    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise InputError(f"eps must be a finite number > 0, got {eps}")
    _check_inputs(inputs, batch_size)
    theta0 = model.flat_params() if theta0 is None else theta0.detach()
    if theta0.dtype not in (torch.float32, torch.float64):
        # float16 rounds at ~5e-4 (bfloat16 ~4e-3): the eps-sized first-order terms drown in it
        # (a cosine of 0.166 where float64 gives 0.174, issue 24)
        raise InputError(
            f"the parameters are {theta0.dtype}, whose rounding swamps the first-order terms; "
            "use float32 or float64 (e.g. module.double())"
        )
    check_vector(model, "theta0", theta0)
    check_vector(model, "direction", direction)
    theta_s0 = theta0 if student_init is None else student_init.detach()
    check_vector(model, "student_init", theta_s0)
    return theta0, theta_s0, direction.detach().to(theta0.dtype)


def model_outputs(model: FunctionalModel, theta: Tensor, inputs: Tensor) -> Tensor:
    """``f(theta, inputs)``, with a model that cannot take ``inputs`` refused in one line."""
    try:
        outputs = model(theta, inputs)
    except (RuntimeError, TypeError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"the model's forward failed on inputs of shape {tuple(inputs.shape)} "
            f"({first}); pass inputs shaped as the model expects"
        ) from error
    if not isinstance(outputs, Tensor) or outputs.ndim < 2:
        raise InputError("the model must return a tensor of outputs shaped (N, ..., k)")
    return outputs


# --------------------------------------------------------------------------------------------
# teacher
# --------------------------------------------------------------------------------------------
@dataclass
class TeacherTask:
    """The teacher's trait: a differentiable loss L_T(theta) = loss_fn(f_theta(inputs), targets).

    ``loss_fn`` returns a scalar (e.g. ``torch.nn.functional.cross_entropy`` on some logits).
    """

    loss_fn: TeacherLossFn
    inputs: Tensor
    targets: Tensor

    def loss(self, model: FunctionalModel, theta: Tensor) -> Tensor:
        """The trait loss L_T(theta) at ``theta`` (a scalar; anything else is refused)."""
        value = self.loss_fn(model_outputs(model, theta, self.inputs), self.targets)
        if not isinstance(value, Tensor) or value.ndim != 0:
            raise InputError("the teacher loss must return a scalar tensor")
        return value

    def gradient(self, model: FunctionalModel, theta: Tensor) -> Tensor:
        """The gradient of L_T at ``theta``, by reverse mode on a detached copy of ``theta``."""
        theta = theta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(model, theta), theta)
        return grad

    def update(self, model: FunctionalModel, theta: Tensor) -> Tensor:
        """The teacher's update direction v = -grad L_T(theta) (one step of plain GD, lr = 1)."""
        return -self.gradient(model, theta)


def teacher_update(
    model: FunctionalModel, theta: Tensor, loss_fn: TeacherLossFn, inputs: Tensor, targets: Tensor
) -> Tensor:
    """V = -grad_theta L_T(theta) for a user teacher loss (see :class:`TeacherTask`).

    Args:
        model: the network as f(theta, x).
        theta: where to take the gradient (theta_0), a flat vector.
        loss_fn: (outputs, targets) -> scalar trait loss.
        inputs: the teacher's inputs.
        targets: the teacher's targets.

    Returns:
        v = -grad L_T(theta), a flat vector.

    Raises:
        InputError: the forward fails on ``inputs`` or the loss is not a scalar.

    """
    return TeacherTask(loss_fn, inputs, targets).update(model, theta)


# --------------------------------------------------------------------------------------------
# kernels: one batch, pure tensor functions (composable with torch.func.vmap over seeds)
# --------------------------------------------------------------------------------------------
def imitation_objective(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, targets: Tensor, loss: ImitationLoss
) -> Tensor:
    """L_S(theta) = E_x[l(f(theta, x), y(x))] on one batch (mean over every position)."""
    return loss.value(model(theta, inputs), targets).mean()


def _outside_transforms() -> bool:
    """True when no torch.func transform (vmap, grad, jvp...) is active around the caller.

    There the kernels use plain autograd and dual tensors, which skip the transforms' per-op
    dispatch; inside one they use torch.func, which composes. Both give the same numbers.

    Returns:
        Whether the plain autograd path may be used.

    """
    try:
        return torch._C._functorch.peek_interpreter_stack() is None
    except AttributeError:  # a torch without the functorch interpreter stack
        return False


def dual_forward(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, tangent: Tensor
) -> tuple[Tensor, Tensor]:
    """(f(theta, x), J tangent) from one forward pass with dual tensors.

    Returns:
        z0 (with theta's autograd graph when theta requires grad) and u = J tangent.

    """
    with fwad.dual_level():
        dual = fwad.unpack_dual(model(fwad.make_dual(theta, tangent), inputs))
    u = dual.tangent if dual.tangent is not None else torch.zeros_like(dual.primal)
    return dual.primal, u


def student_update_kernel(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, targets: Tensor, loss: ImitationLoss
) -> Tensor:
    """dtheta_S = -grad L_S(theta) on one batch."""
    if _outside_transforms():
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(
                imitation_objective(model, t, inputs, targets, loss), t
            )
        return -gradient
    return -torch.func.grad(lambda t: imitation_objective(model, t, inputs, targets, loss))(theta)


def gauss_newton_kernel(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss, vector: Tensor
) -> Tensor:
    """K q = E_x[J^T M J] q on one batch: one jvp (J q), M in closed form, one vjp.

    Outside torch.func transforms the jvp and the vjp share one forward pass (dual tensors
    recorded for reverse mode); inside them (e.g. vmap over seeds) they run as torch.func's.

    Returns:
        K q over this batch, in theta's dtype.

    """
    if _outside_transforms():
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            z0, u = dual_forward(model, t, inputs, vector)
            curvature = loss.hessian_vector_product(z0.detach(), u.detach())
            (product,) = torch.autograd.grad(z0, t, curvature)
        return product / output_positions(z0)
    f = model.as_function(inputs)
    z0, u = jvp(f, (theta,), (vector,))
    _, pullback = vjp(f, theta)
    (product,) = pullback(loss.hessian_vector_product(z0, u))
    return product / output_positions(z0)


def first_order_kernel(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss, v: Tensor
) -> Tensor:
    """A = E_x[u^T M u], u = J v, on one batch (one jvp); reduced in float64."""
    if _outside_transforms():
        with torch.no_grad():
            z0, u = dual_forward(model, theta.detach(), inputs, v)
    else:
        z0, u = jvp(model.as_function(inputs), (theta,), (v,))
    curvature = loss.hessian_vector_product(z0, u)
    return (u.double() * curvature.double()).sum() / output_positions(z0)


def taylor_kernel(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss, v: Tensor
) -> Tensor:
    """[A, B] on one batch from one nested jvp (z0, u = D f[v], w = D^2 f[v, v]).

    Returns:
        The float64 tensor [A, B] with A = E_x[u^T M u] and
        B = (1/2) E_x[u^T M w - u^T G[u, u]] over this batch.

    """
    f = model.as_function(inputs)

    def value_and_derivative(t: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(f, (t,), (v,))

    # Nested forward mode: torch's fused layer/instance norm get this derivative wrong, so they
    # are evaluated from elementary ops here (see sublim_theory/engine/forward_ad.py).
    with explicit_normalization():
        (z0, u), (_, w) = jvp(value_and_derivative, (theta,), (v,))
    u64 = u.double()
    a = (u64 * loss.hessian_vector_product(z0, u).double()).sum()
    b = (u64 * loss.hessian_vector_product(z0, w).double()).sum()
    b = b - (u64 * loss.target_curvature(z0, u).double()).sum()
    return torch.stack([a, 0.5 * b]) / output_positions(z0)


def second_order_kernel(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss, v: Tensor
) -> Tensor:
    """B = (1/2) E_x[u^T M w - u^T G[u, u]], w = D^2 f[v, v] (jvp of jvp), on one batch."""
    return taylor_kernel(model, theta, inputs, loss, v)[1]


# --------------------------------------------------------------------------------------------
# public functions: validated, chunked over the inputs, accumulated in float64
# --------------------------------------------------------------------------------------------
def _accumulate(
    kernel: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int | None
) -> Tensor:
    """E over all inputs of a per-batch mean ``kernel(batch_inputs)``, weighted by batch size."""
    total, count = None, 0
    for s in batch_chunks(inputs, batch_size):
        n = s.stop - s.start
        part = kernel(s).double() * n
        total = part if total is None else total + part
        count += n
    return total / count


def distillation_targets(
    model: FunctionalModel, theta_teacher: Tensor, inputs: Tensor, batch_size: int | None = None
) -> Tensor:
    """y(x) = f(theta_T, x), detached: what the student imitates.

    Args:
        model: the network as f(theta, x).
        theta_teacher: the teacher's parameters theta_0 + eps v, a flat vector.
        inputs: the distillation inputs, shape (N, ...).
        batch_size: evaluate in chunks of this many samples.

    Returns:
        The teacher's outputs, shape (N, ..., k), without a graph.

    Raises:
        InputError: the model's forward fails on these inputs.

    """
    with torch.no_grad():
        return torch.cat(
            [
                model_outputs(model, theta_teacher, inputs[s])
                for s in batch_chunks(inputs, batch_size)
            ]
        )


def student_update(
    model: FunctionalModel,
    theta_student: Tensor,
    inputs: Tensor,
    targets: Tensor,
    loss: ImitationLoss,
    batch_size: int | None = None,
) -> Tensor:
    """The exact one-step update dtheta_S = -grad_theta E_x[l(f(theta, x), y(x))] at theta_student.

    E_x is the mean over every output position (samples, and sequence positions for (N, T, k)).

    Args:
        model: the network as f(theta, x).
        theta_student: the student's parameters theta_S0, a flat vector.
        inputs: the distillation inputs, shape (N, ...).
        targets: the teacher's outputs y(x) on ``inputs`` (:func:`distillation_targets`).
        loss: the imitation loss l(z, y).
        batch_size: process inputs in chunks of this many samples (same result, less memory).

    Returns:
        dtheta_S, a flat vector in the parameters' dtype (accumulated in float64).

    Raises:
        InputError: empty, non-finite or mis-shaped inputs, or ``batch_size`` < 1.

    """
    _check_inputs(inputs, batch_size)
    model_outputs(model, theta_student.detach(), inputs[:1])  # a clear error for mis-shaped inputs
    theta = theta_student.detach()
    update = _accumulate(
        lambda s: student_update_kernel(model, theta, inputs[s], targets[s], loss),
        inputs,
        batch_size,
    )
    return update.to(theta.dtype)


def _over_inputs(
    kernel: Callable[[FunctionalModel, Tensor, Tensor, ImitationLoss, Tensor], Tensor],
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    vector: Tensor,
    batch_size: int | None,
    vector_name: str,
) -> Tensor:
    """Validate, then average a (model, theta, batch, loss, vector) kernel over all inputs."""
    _check_inputs(inputs, batch_size)
    check_vector(model, vector_name, vector)
    model_outputs(model, theta, inputs[:1])  # a clear error for mis-shaped inputs
    return _accumulate(lambda s: kernel(model, theta, inputs[s], loss, vector), inputs, batch_size)


def gauss_newton_product(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    vector: Tensor,
    batch_size: int | None = None,
) -> Tensor:
    """K q = E_x[J^T M J] q at theta, by one jvp (J q), a closed-form M, and one vjp. Never forms J.

    K is the Gauss-Newton matrix of the imitation loss at z = y (theory/alignment.md, Lemma 1):
    the first-order student update is K (eps v - Delta).

    Args:
        model: the network as f(theta, x) (see :class:`FunctionalModel`).
        theta: the parameters to expand around, a flat vector (theta_0 in the theorem).
        inputs: the distillation inputs x ~ D_S, shape (N, ...).
        loss: the imitation loss l(z, y) (``make_loss``).
        vector: q, a flat vector of ``model.num_params`` entries.
        batch_size: process inputs in chunks of this many samples.

    Returns:
        K q, a flat vector in theta's dtype (accumulated in float64).

    Raises:
        InputError: empty, non-finite or mis-shaped inputs, a vector that is not a finite flat
            vector of ``model.num_params`` entries, or ``batch_size`` < 1.

    """
    product = _over_inputs(
        gauss_newton_kernel, model, theta, inputs, loss, vector, batch_size, "vector"
    )
    return product.to(theta.dtype)


def first_order_coefficient(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    batch_size: int | None = None,
) -> float:
    """A = E_x[u^T M u] >= 0, u = J v: <dtheta_S, v> = eps A + O(eps^2). One jvp per chunk.

    The arguments and the errors are those of :func:`taylor_coefficients`.

    Returns:
        A, reduced in float64 (>= 0 up to rounding, since M is PSD).

    """
    return float(
        _over_inputs(first_order_kernel, model, theta, inputs, loss, v, batch_size, "direction")
    )


def taylor_coefficients(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    batch_size: int | None = None,
) -> tuple[float, float]:
    """(A, B) of <dtheta_S, v> = eps A + eps^2 B + O(eps^3), from one nested jvp per chunk.

    Needs l in C^4 and f in C^3 near theta_0 for the eps^3 remainder (theory/alignment.md).

    Args:
        model: the network as f(theta, x) (see :class:`FunctionalModel`).
        theta: the parameters to expand around, a flat vector (theta_0 in the theorem).
        inputs: the distillation inputs x ~ D_S, shape (N, ...).
        loss: the imitation loss l(z, y) (``make_loss``).
        v: the teacher's direction, a flat vector.
        batch_size: process inputs in chunks of this many samples.

    Returns:
        (A, B) as floats, reduced in float64.

    Raises:
        InputError: empty, non-finite or mis-shaped inputs, a vector that is not a finite flat
            vector of ``model.num_params`` entries, or ``batch_size`` < 1.

    """
    a, b = _over_inputs(taylor_kernel, model, theta, inputs, loss, v, batch_size, "direction")
    return float(a), float(b)


def second_order_coefficient(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    v: Tensor,
    batch_size: int | None = None,
) -> float:
    """B = (1/2) E_x[u^T M w - u^T G[u, u]], w = D^2 f[v, v] (jvp of jvp).

    G[u, u] = d^2/ds^2 grad_z l(z0, z0 + s u) at s = 0 is a mixed derivative of the loss (one in
    z, two in y), not its third derivative in z: in general G[u, u] = -D^3_z l[u, u] -
    2 (D_y Hess_zz l)[u] u, and the two agree only when Hess_zz l does not depend on the target
    (true for the squared error, cross-entropy and KL of ``losses.py``). theory/alignment.md
    section 4; B is the eps^2 coefficient when l is C^4 and f is C^3 near theta_0.

    The arguments and the errors are those of :func:`taylor_coefficients`.

    Returns:
        B as a float, reduced in float64.

    """
    return taylor_coefficients(model, theta, inputs, loss, v, batch_size)[1]
