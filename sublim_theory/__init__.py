"""sublim-theory: verify the subliminal-learning alignment theorem numerically and symbolically."""

from sublim_theory.engine.alignment import (
    TeacherTask,
    cosine,
    distillation_targets,
    first_order_coefficient,
    gauss_newton_product,
    second_order_coefficient,
    student_update,
    taylor_coefficients,
    teacher_update,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import KLDivergence, SoftCrossEntropy, SquaredError, make_loss
from sublim_theory.engine.report import AlignmentReport, alignment_report, critical_step
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import build_model, make_inputs

__version__ = "0.1.0"

__all__ = [
    "AlignmentReport",
    "FunctionalModel",
    "InputError",
    "KLDivergence",
    "SoftCrossEntropy",
    "SquaredError",
    "TeacherTask",
    "alignment_report",
    "build_model",
    "cosine",
    "critical_step",
    "distillation_targets",
    "first_order_coefficient",
    "gauss_newton_product",
    "make_inputs",
    "make_loss",
    "second_order_coefficient",
    "student_update",
    "taylor_coefficients",
    "teacher_update",
]
