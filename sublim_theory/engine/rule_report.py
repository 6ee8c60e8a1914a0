"""One student step under any update rule, against the teacher's direction and its prediction.

theory/optimizers.md. The student's exact gradient at theta_S0 is
``g = -dtheta_S = grad_theta E_x[l(f(theta, x), y(x))]`` with ``y = f(theta_0 + eps v, x)``; its
first-order form (Lemma 1, theory/alignment.md) is ``g1 = -K(eps v - Delta)``,
``Delta = theta_S0 - theta_0``, ``K = E_x[J^T M J]`` at theta_0. A rule
(:mod:`sublim_theory.engine.update_rules`) maps a gradient and a state to a step, so

    exact step       s  = rule(g,  theta_S0, state)
    prediction       s1 = rule(g1, theta_S0, state)

From fresh state and the shared init, ``s1`` is the rule's ``first_order_step(K v, eps,
theta_S0)`` (sgd/momentum/preconditioned: ``alpha eps K v``; Adam: ``alpha eps k / (eps |k| +
eps_a)``; signsgd: ``alpha sign(K v)``). For a rule that is smooth in ``g`` near ``g1`` (sgd,
momentum, preconditioned, Adam with a warmed second moment) ``s - s1 = O(eps^2)``; for the sign
step and Adam's fresh step the claim is the SIGN of each coordinate at small eps. The student's
step size is the rule's ``lr`` (``student_lr`` folded in). The trait-loss change is measured
exactly, ``L_T(theta_S0 + s) - L_T(theta_S0)``, and to first order in the step,
``<grad L_T(theta_S0), s1>``.

The teacher's direction v is either ``-grad L_T(theta_0)`` or the displacement after n steps of
any rule on L_T (:func:`teacher_direction`; the tiny LM's teacher is 10 Adam steps).

LoRA: pass ``FunctionalModel(add_lora(module, r))``; theta is then the flat adapter vector
(A, B) and every quantity is measured in adapter space (:mod:`sublim_theory.engine.lora`).
A student whose frozen base differs from the teacher's (the independent-base placement) is a
different function of the same adapter vector: pass it as ``student_model``; the first-order
prediction does not apply there (the bases differ at O(1)), so its rows are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from sublim_theory.engine.alignment import (
    TeacherTask,
    batched_norm,
    check_finite,
    check_vector,
    checked_problem,
    distillation_targets,
    dot,
    gauss_newton_product,
    student_update,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import ImitationLoss
from sublim_theory.engine.update_rules import State, UpdateRule, make_rule
from sublim_theory.errors import InputError

__all__ = [
    "RuleReport",
    "StudentGradients",
    "report_rule",
    "rule_report",
    "student_gradients",
    "teacher_direction",
]


def teacher_direction(
    model: FunctionalModel,
    theta0: Tensor,
    task: TeacherTask,
    rule: UpdateRule | str | None = None,
    steps: int = 1,
    lr: float = 1.0,
    state: State | None = None,
) -> Tensor:
    """The teacher's direction v: ``-grad L_T(theta0)``, or the displacement after ``steps`` steps.

    Args:
        model: the network (for LoRA, the adapted network: v is then in adapter space).
        theta0: the shared init.
        task: the trait L_T.
        rule: None for ``-grad L_T(theta0)`` (plain GD, lr 1); else an update rule, or a rule
            name built with ``lr``, run for ``steps`` full-batch steps on L_T.
        steps: how many steps of ``rule`` (>= 1).
        lr: the learning rate when ``rule`` is a name.
        state: the rule's starting state (default: fresh).

    Returns:
        v, a flat vector: ``theta_steps - theta0`` for a rule.

    Raises:
        InputError: ``steps`` < 1, an unknown rule name, or a mis-shaped ``theta0``.

    """
    check_vector(model, "theta0", theta0)
    theta0 = theta0.detach()
    if rule is None:
        return task.update(model, theta0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"the teacher needs steps >= 1 (an integer), got {steps!r}")
    if isinstance(rule, str):
        rule = make_rule(rule, lr)
    theta = theta0
    state = rule.init(theta0) if state is None else state
    for _ in range(steps):
        step, state = rule(task.gradient(model, theta), theta, state)
        theta = theta + step
    return theta - theta0


@dataclass(frozen=True, eq=False)
class StudentGradients:
    """What every rule's step is made from (:func:`student_gradients`), computed once.

    Attributes:
        model: the student's network (the teacher's unless the bases differ).
        theta0: the shared init; theta_student the student's init theta_S0.
        direction: v.
        eps: the teacher's step.
        gradient: the exact student gradient g at theta_S0.
        first_order_gradient: ``-K(eps v - Delta)``, or None when the student's base differs.
        k_v: K v at theta_0.
        control_gradient: the student's gradient toward the base's own outputs f(theta_0, x)
            (eps = 0, the paper's control; exactly 0 at the shared init), or None.

    """

    model: FunctionalModel
    theta0: Tensor
    theta_student: Tensor
    direction: Tensor
    eps: float
    gradient: Tensor
    first_order_gradient: Tensor | None
    k_v: Tensor
    control_gradient: Tensor | None = None


def student_gradients(
    model: FunctionalModel,
    direction: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    eps: float,
    *,
    theta0: Tensor | None = None,
    student_init: Tensor | None = None,
    student_model: FunctionalModel | None = None,
    batch_size: int | None = None,
) -> StudentGradients:
    """The student's exact gradient, its first-order form and K v: two backward passes and a jvp.

    Args:
        model: the teacher's network (its base is the shared base).
        direction: v (:func:`teacher_direction` or any direction).
        inputs: the distillation inputs.
        loss: the imitation loss.
        eps: the teacher's step, theta_T = theta_0 + eps v (> 0).
        theta0: the shared init (default: the module's parameters).
        student_init: theta_S0 (default theta0).
        student_model: a network with the same parameter layout and a different frozen part
            (LoRA on an independent base); default ``model``.
        batch_size: process inputs in chunks of this many samples.

    Returns:
        A :class:`StudentGradients`.

    Raises:
        InputError: eps not finite and > 0, mis-shaped vectors or inputs, a student model of
            another size, or teacher outputs that overflow.

    """
    theta0, theta_s0, v = checked_problem(
        model, direction, inputs, eps, theta0, student_init, batch_size
    )
    student = model if student_model is None else student_model
    if student.num_params != model.num_params:
        raise InputError(
            f"the student model has {student.num_params} trainable parameters, the teacher's "
            f"{model.num_params}; give both the same layout (e.g. the same LoRA rank and targets)"
        )
    targets = distillation_targets(model, theta0 + eps * v, inputs, batch_size)
    check_finite("teacher outputs", targets)
    gradient = -student_update(student, theta_s0, inputs, targets, loss, batch_size)
    if student_model is None and bool(torch.equal(theta_s0, theta0)):
        # grad_z l(y, y) = 0 (l minimized at z = y): exactly 0, not rounding noise, which a
        # sign step or a fresh Adam step would blow up to a full step
        control = torch.zeros_like(gradient)
    else:
        own = distillation_targets(model, theta0, inputs, batch_size)
        control = -student_update(student, theta_s0, inputs, own, loss, batch_size)
    k_v = gauss_newton_product(model, theta0, inputs, loss, v, batch_size)
    first = None
    if student_model is None:
        offset = theta_s0 - theta0
        k_offset = (
            gauss_newton_product(model, theta0, inputs, loss, offset, batch_size)
            if bool(offset.any())
            else torch.zeros_like(k_v)
        )
        first = -(eps * k_v - k_offset)
    return StudentGradients(student, theta0, theta_s0, v, float(eps), gradient, first, k_v, control)


@dataclass(frozen=True, eq=False)
class RuleReport:
    """One rule's step against v, K v and its first-order prediction.

    Keys of :meth:`to_dict` (floats; NaN where a vector is zero or the prediction does not
    apply; JSON writes them as null):
        rule (str), lr, eps, num_params (int), init_distance_abs.
        norm_step, norm_prediction, norm_teacher, norm_K_v: Euclidean norms.
        cos_step_teacher, cos_step_K_v, cos_step_prediction: cosines of the exact step s.
        cos_prediction_teacher, cos_prediction_K_v: cosines of the prediction s1.
        prediction_residual: ||s - s1|| / ||s||.
        sign_agreement: the fraction of coordinates where sign(s) = sign(s1), over those where
            s1 != 0.
        teacher_loss_change_exact: L_T(theta_S0 + s) - L_T(theta_S0) (needs a teacher task).
        teacher_loss_change_first_order: <grad L_T(theta_S0), s1>.
        teacher_loss_change_control: the same change for the control step s0 = rule(g0, state),
            g0 the gradient toward the base's own outputs (eps = 0): what the rule's state
            (warm moments) and the init do without any teacher. 0 for fresh rules at the shared
            init. NaN without a control gradient.
        teacher_loss_change_vs_control: exact minus control: the teacher's share of the change.
        cos_signal_teacher, cos_signal_K_v: cosines of the teacher-induced part s - s0.
    The tensors ``step``, ``prediction`` and ``state`` (the rule's state after the step) are
    attributes, not keys.
    """

    rule: str
    lr: float
    eps: float
    num_params: int
    init_distance_abs: float
    norm_step: float
    norm_prediction: float
    norm_teacher: float
    norm_K_v: float
    cos_step_teacher: float
    cos_step_K_v: float
    cos_step_prediction: float
    cos_prediction_teacher: float
    cos_prediction_K_v: float
    prediction_residual: float
    sign_agreement: float
    teacher_loss_change_exact: float | None
    teacher_loss_change_first_order: float | None
    teacher_loss_change_control: float | None
    teacher_loss_change_vs_control: float | None
    cos_signal_teacher: float
    cos_signal_K_v: float
    step: Tensor
    prediction: Tensor | None
    state: State

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The scalar keys as a plain dict, non-finite floats as None (valid JSON)."""
        skip = {"step", "prediction", "state"}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {
            k: (None if isinstance(x, float) and not math.isfinite(x) else x)
            for k, x in values.items()
        }


def _cosines(vectors: list[Tensor]) -> tuple[list[float], list[list[float]]]:
    """Norms and the cosine matrix of flat vectors, every reduction in float64 (NaN for zeros)."""
    stacked = torch.stack([x.reshape(-1).double() for x in vectors])
    norms = batched_norm(stacked).tolist()
    gram = (stacked @ stacked.T).tolist()
    n = len(vectors)
    cos = [
        [
            gram[i][j] / (norms[i] * norms[j]) if norms[i] * norms[j] > 0 else math.nan
            for j in range(n)
        ]
        for i in range(n)
    ]
    return norms, cos


def report_rule(
    gradients: StudentGradients,
    rule: UpdateRule,
    state: State | None = None,
    teacher: TeacherTask | None = None,
) -> RuleReport:
    """Apply ``rule`` to the exact and the first-order gradient and compare (module docstring).

    Args:
        gradients: from :func:`student_gradients`.
        rule: the student's update rule (its ``lr`` is the student's step size).
        state: the rule's state before the step (default fresh: ``rule.init(theta_S0)``).
        teacher: the trait task; enables the trait-loss rows.

    Returns:
        A :class:`RuleReport`.

    Raises:
        InputError: ``rule`` is not an update rule, ``state`` does not fit the parameters, or
            a step (exact, control or predicted) or a norm is not finite (an overflow would
            otherwise be reported as a cosine of 0).

    """
    if not isinstance(rule, UpdateRule):
        raise InputError(
            f"rule must be an UpdateRule (make_rule('adam', lr)), got {type(rule).__name__}"
        )
    theta_s0 = gradients.theta_student
    state = rule.init(theta_s0) if state is None else state
    try:
        step, new_state = rule(gradients.gradient, theta_s0, state)
        control = None
        if gradients.control_gradient is not None:
            control, _ = rule(gradients.control_gradient, theta_s0, state)
        prediction = None
        if gradients.first_order_gradient is not None:
            prediction, _ = rule(gradients.first_order_gradient, theta_s0, state)
    except (KeyError, RuntimeError) as error:
        raise InputError(
            f"the {rule.name} state does not fit these parameters ({error}); pass a state from "
            f"rule.init(parameters) or from a previous step on the same parameters"
        ) from error
    for name, vector in (("step", step), ("control step", control), ("prediction", prediction)):
        if vector is not None and not bool(torch.isfinite(vector).all()):
            raise InputError(
                f"the {rule.name} {name} (lr {rule.lr:g}) has NaN or inf entries: the update "
                "overflowed; lower the learning rate (or rescale the inputs)"
            )
    missing = torch.full_like(step, math.nan)
    predicted = missing if prediction is None else prediction
    signal = step - control if control is not None else missing
    norms, cos = _cosines([step, predicted, gradients.direction, gradients.k_v, signal])
    names = ("step", "prediction", "teacher direction", "K v")
    for name, value in zip(names, norms):
        if math.isinf(value):
            raise InputError(
                f"the norm of the {name} ({rule.name}, lr {rule.lr:g}) overflows float64, so "
                "its cosines are undefined; lower the learning rate or rescale the inputs"
            )
    residual = math.nan
    agreement = math.nan
    if prediction is not None:
        residual = float(batched_norm((step - prediction).double())) / max(norms[0], 1e-300)
        decided = prediction != 0
        if bool(decided.any()):
            same = torch.sign(step[decided]) == torch.sign(prediction[decided])
            agreement = float(same.double().mean())
    change_exact = change_first = change_control = change_vs_control = None
    if teacher is not None:
        model = gradients.model
        with torch.no_grad():
            base = float(teacher.loss(model, theta_s0).double())
            stepped = float(teacher.loss(model, theta_s0 + step).double())
            change_control = math.nan
            if control is not None:
                change_control = float(teacher.loss(model, theta_s0 + control).double()) - base
        change_exact = stepped - base
        change_vs_control = stepped - base - change_control
        change_first = (
            dot(teacher.gradient(model, theta_s0), prediction)
            if prediction is not None
            else math.nan
        )
    return RuleReport(
        rule=rule.name,
        lr=float(rule.lr),
        eps=gradients.eps,
        num_params=int(theta_s0.numel()),
        init_distance_abs=float(batched_norm((theta_s0 - gradients.theta0).double())),
        norm_step=norms[0],
        norm_prediction=norms[1],
        norm_teacher=norms[2],
        norm_K_v=norms[3],
        cos_step_teacher=cos[0][2],
        cos_step_K_v=cos[0][3],
        cos_step_prediction=cos[0][1],
        cos_prediction_teacher=cos[1][2],
        cos_prediction_K_v=cos[1][3],
        prediction_residual=residual,
        sign_agreement=agreement,
        teacher_loss_change_exact=change_exact,
        teacher_loss_change_first_order=change_first,
        teacher_loss_change_control=change_control,
        teacher_loss_change_vs_control=change_vs_control,
        cos_signal_teacher=cos[4][2],
        cos_signal_K_v=cos[4][3],
        step=step,
        prediction=prediction,
        state=new_state,
    )


def rule_report(
    model: FunctionalModel,
    direction: Tensor,
    inputs: Tensor,
    loss: ImitationLoss,
    eps: float,
    rule: UpdateRule,
    *,
    state: State | None = None,
    theta0: Tensor | None = None,
    student_init: Tensor | None = None,
    student_model: FunctionalModel | None = None,
    teacher: TeacherTask | None = None,
    batch_size: int | None = None,
) -> RuleReport:
    """One student step under ``rule``: :func:`student_gradients` then :func:`report_rule`.

    Args:
        model: the network (for LoRA: ``FunctionalModel(add_lora(module, r))``, adapter space).
        direction: v, a tensor (:func:`teacher_direction` builds -grad L_T or an n-step one).
        inputs: the distillation inputs.
        loss: the imitation loss.
        eps: the teacher's step (> 0).
        rule: the student's update rule; its ``lr`` is the student's step size.
        state: the rule's state before the step (default fresh; e.g. a warmed Adam state).
        theta0: the shared init (default: the module's parameters).
        student_init: theta_S0 (default theta0).
        student_model: the student's network when its frozen base differs (see module doc).
        teacher: the trait task; enables the trait-loss rows.
        batch_size: process inputs in chunks of this many samples.

    Returns:
        A :class:`RuleReport`.

    Raises:
        InputError: as :func:`student_gradients` and :func:`report_rule`.

    """
    gradients = student_gradients(
        model,
        direction,
        inputs,
        loss,
        eps,
        theta0=theta0,
        student_init=student_init,
        student_model=student_model,
        batch_size=batch_size,
    )
    return report_rule(gradients, rule, state, teacher)
