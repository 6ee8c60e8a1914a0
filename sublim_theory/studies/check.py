"""The one-step check: a named architecture and loss, its teacher, its alignment report.

Used by ``sublim-theory check`` and ``demo``: the theorem's terms for one zoo model, a teacher
trained on its regular outputs and a student imitating its auxiliary outputs on noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sublim_theory.engine.alignment import TeacherTask
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.report import AlignmentReport, alignment_report
from sublim_theory.errors import InputError
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.models.architectures import build_model, make_inputs

__all__ = ["COLUMNS", "HEADERS", "KL_TEMPERATURE", "LEGEND", "N_CLASSES", "check", "format_table"]

N_CLASSES = 10  # the teacher's "regular" outputs; --aux K appends K auxiliary outputs
# At tau = 1, KL(softmax(y) || softmax(z)) has the same z-gradient as the soft cross-entropy, so
# its report would copy softmax_ce's; tau = 2 exercises the 1/tau factors of M and G.
KL_TEMPERATURE = 2.0


def check(
    arch: str,
    loss: str,
    eps: float,
    aux: int = 0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    width: int = 16,
    depth: int = 2,
    n_inputs: int = 64,
    temperature: float = KL_TEMPERATURE,
) -> AlignmentReport:
    """Build a model, a teacher task (cross-entropy on the regular outputs) and noise inputs; report.

    ``temperature`` is the KL loss's tau (ignored by the other losses).

    Returns:
        The alignment report (exact and predicted quantities at ``eps``).

    Raises:
        InputError: ``eps`` not a finite positive number with a finite square, ``aux`` < 0 or
            ``n_inputs`` < 1.

    """
    # eps A + eps^2 B is evaluated in Python floats: past sqrt(max float) ~ 1.3e154 the square
    # raises OverflowError, so such a step is refused with the other bad values of eps
    if not (math.isfinite(eps) and eps > 0 and math.isfinite(eps * eps)):
        raise InputError(
            f"eps must be a finite number > 0 whose square is finite (eps < 1.3e154), got {eps}; "
            "the report expands in eps: use a small step such as 1e-4"
        )
    if aux < 0:
        raise InputError(f"--aux must be >= 0, got {aux}")
    if n_inputs < 1:
        raise InputError(f"--inputs must be >= 1, got {n_inputs}")
    sizes = {"width": width, "depth": depth}
    model = FunctionalModel(build_model(arch, N_CLASSES + aux, seed=seed, dtype=dtype, **sizes))
    teacher_inputs = make_inputs(
        arch, n_inputs, seed=seed + OFFSETS["check.teacher_inputs"], dtype=dtype
    )
    labels = torch.randint(0, N_CLASSES, (n_inputs,), generator=torch.Generator().manual_seed(seed))
    teacher = TeacherTask(
        lambda z, y: F.cross_entropy(z[..., :N_CLASSES], y), teacher_inputs, labels
    )
    student_inputs = make_inputs(
        arch,
        n_inputs,
        seed=seed + OFFSETS["check.student_inputs"],
        distribution="uniform",
        dtype=dtype,
    )
    subset = list(range(N_CLASSES, N_CLASSES + aux)) if aux else None
    theta0 = model.flat_params()
    direction = teacher.update(model, theta0)
    return alignment_report(
        model,
        direction,
        student_inputs,
        make_loss(loss, subset, **({"temperature": temperature} if loss == "kl" else {})),
        eps,
        theta0=theta0,
        teacher=teacher,
    )


COLUMNS = (
    ("arch", "{:<12}"),
    ("loss", "{:<24}"),
    ("cos_exact_teacher", "{:>10.5f}"),
    ("cos_first_order_teacher", "{:>10.5f}"),
    ("cos_exact_first_order", "{:>12.9f}"),
    ("taylor_residual", "{:>9.2e}"),
    ("A", "{:>10.3e}"),
    ("B", "{:>10.3e}"),
    ("eps_star", "{:>9.2e}"),
    ("eps_star_trusted", "{:>5}"),
    ("teacher_loss_change_exact", "{:>10.3e}"),
)
HEADERS = (
    "arch",
    "loss",
    "cos(ex,v)",
    "cos(1st,v)",
    "cos(ex,1st)",
    "residual",
    "A",
    "B",
    "eps*",
    "eps*?",
    "dL_T",
)


LEGEND = (
    "eps*: root of the truncated quadratic eps A + eps^2 B ('none' when B >= 0: no guarantee for "
    "large eps); eps*? = yes when the exact alignment at eps* is within 10% of eps* A (the "
    "cubic remainder is small there), no otherwise (see eps_star_note in --json)"
)


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table, one line a row under a header."""
    widths = [
        len(fmt.format(0) if "f" in fmt or "e" in fmt else fmt.format("")) for _, fmt in COLUMNS
    ]
    lines = [
        "  ".join(
            h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(HEADERS, widths))
        )
    ]
    for row in rows:
        cells = []
        for key, fmt in COLUMNS:
            value = row[key]
            if key == "eps_star_trusted":
                value = "yes" if value else "no"
            elif value is None or (isinstance(value, float) and not math.isfinite(value)):
                value = "none" if key == "eps_star" else "nan"
                fmt = (
                    fmt.replace(".5f", "").replace(".9f", "").replace(".3e", "").replace(".2e", "")
                )
            cells.append(fmt.format(value))
        lines.append("  ".join(cells))
    return "\n".join([*lines, LEGEND])
