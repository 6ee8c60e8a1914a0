"""The theorem checked exactly on a concrete network with symbolic weights, and lambdified A, B, K.

The network is a tanh MLP with 2 inputs, 2 hidden units and 3 outputs,

    f_theta(x) = W2 tanh(W1 x + b1) + b2,     theta = (W1, b1, W2, b2) in R^15,

with every weight a sympy symbol, laid out as ``torch.nn.Sequential(Linear(2, 2), Tanh(),
Linear(2, 3))`` flattens its parameters (row-major weights, then biases), so the lambdified
expressions take the engine's flat parameter vector as is. The exact student update is expanded in
eps and its coefficients are compared with the closed forms of theory/alignment.md (sections 2-4).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp

from sublim_theory.symbolic import losses as loss_formulas
from sublim_theory.symbolic.steps import Derivation

__all__ = [
    "LAYOUT",
    "PARAMETERS",
    "SETTING",
    "SOFT_CROSS_ENTROPY",
    "SQUARED",
    "THETA",
    "ImitationLossFormula",
    "LambdifiedCoefficients",
    "concrete_network",
    "exact_student_update",
    "kl_formula",
    "lambdified_coefficients",
    "tanh_mlp",
]

INPUTS, HIDDEN, OUTPUTS = 2, 2, 3
LAYOUT = (
    ("W1", (HIDDEN, INPUTS)),
    ("b1", (HIDDEN, 1)),
    ("W2", (OUTPUTS, HIDDEN)),
    ("b2", (OUTPUTS, 1)),
)


def _parameter_symbols() -> list[sp.Symbol]:
    names: list[sp.Symbol] = []
    for name, (rows, cols) in LAYOUT:
        for r in range(rows):
            for c in range(cols):
                suffix = f"{r + 1}{c + 1}" if cols > 1 else f"{r + 1}"
                names.append(sp.Symbol(f"{name}_{suffix}", real=True))
    return names


THETA = _parameter_symbols()
PARAMETERS = len(THETA)


def tanh_mlp(theta: list[sp.Expr], x: sp.Matrix) -> sp.Matrix:
    """f_theta(x) = W2 tanh(W1 x + b1) + b2 for a flat parameter list in torch's order."""
    blocks, start = {}, 0
    for name, (rows, cols) in LAYOUT:
        blocks[name] = sp.Matrix(rows, cols, theta[start : start + rows * cols])
        start += rows * cols
    hidden = (blocks["W1"] * x + blocks["b1"]).applyfunc(sp.tanh)
    return blocks["W2"] * hidden + blocks["b2"]


def _rational_vector(seed: int, size: int) -> sp.Matrix:
    """A fixed, generic-looking rational vector (no zero entries), reproducible without RNG state."""
    values = [
        sp.Rational((-1) ** (i + seed) * ((3 * i + 5 * seed) % 7 + 1), 5) for i in range(size)
    ]
    return sp.Matrix(values)


@dataclass(frozen=True)
class ImitationLossFormula:
    """A symbolic imitation loss on 3 outputs: l(z, y) and its name for the document."""

    name: str
    short: str
    latex: str
    value: Callable[[sp.Matrix, sp.Matrix], sp.Expr]


SQUARED = ImitationLossFormula(
    "squared",
    "sq",
    r"\tfrac12\|z-y\|^2",
    lambda z, y: loss_formulas.squared_error(z, y, sp.Integer(1)),
)
SOFT_CROSS_ENTROPY = ImitationLossFormula(
    "softmax_ce",
    "ce",
    r"-\operatorname{softmax}(y)\cdot\log\operatorname{softmax}(z)",
    loss_formulas.soft_cross_entropy,
)


def kl_formula(temperature: sp.Expr) -> ImitationLossFormula:
    """KL(softmax(y/tau) || softmax(z/tau)) at a given temperature."""
    return ImitationLossFormula(
        "kl",
        "kl",
        rf"\mathrm{{KL}}_{{\tau={sp.latex(temperature)}}}",
        lambda z, y: loss_formulas.kl_divergence(z, y, temperature),
    )


def _closed_form_pieces(
    loss: ImitationLossFormula, z0: sp.Matrix, u: sp.Matrix, w: sp.Matrix
) -> tuple[sp.Matrix, sp.Expr, sp.Expr]:
    """(M, A = u^T M u, B = (1/2)(u^T M w - u^T G[u,u])) at z0, from the loss formula by sympy."""
    z = sp.Matrix(sp.symbols(f"z1:{OUTPUTS + 1}", real=True))
    y = sp.Matrix(sp.symbols(f"y1:{OUTPUTS + 1}", real=True))
    direction = sp.Matrix(sp.symbols(f"u1:{OUTPUTS + 1}", real=True))
    formula = loss.value(z, y)
    hessian = loss_formulas.output_hessian_at_target(formula, z, y)
    curvature = loss_formulas.target_curvature(formula, z, y, direction)
    at_point = dict(zip(list(z) + list(direction), list(z0) + list(u)))
    hessian = hessian.subs(at_point)
    curvature = curvature.subs(at_point)
    a_value = (u.T * hessian * u)[0]
    b_value = ((u.T * hessian * w)[0] - (u.T * curvature)[0]) / 2
    return hessian, a_value, b_value


def _network_derivatives(
    x: sp.Matrix, v: sp.Matrix
) -> tuple[sp.Matrix, sp.Matrix, sp.Matrix, sp.Matrix]:
    """(z0, J, u = J v, w = D^2 f[v, v]) of the tanh MLP at the symbolic weights."""
    z0 = tanh_mlp(THETA, x)
    jacobian = z0.jacobian(THETA)
    t = sp.Symbol("t")
    moved = tanh_mlp([p + t * vi for p, vi in zip(THETA, v)], x)
    w = moved.diff(t, 2).subs(t, 0)
    return z0, jacobian, jacobian * v, w


def exact_student_update(
    loss: ImitationLossFormula, x: sp.Matrix, v: sp.Matrix, d: sp.Matrix | None = None
) -> tuple[sp.Matrix, sp.Symbol, sp.Symbol]:
    """dtheta_S(eps, delta) = -grad_theta l(f_theta(x), f_{theta + eps v}(x)) at theta + delta d."""
    eps, delta = sp.symbols("epsilon delta")
    targets = sp.Matrix(sp.symbols(f"Y1:{OUTPUTS + 1}"))
    value = loss.value(tanh_mlp(THETA, x), targets)
    gradient = sp.Matrix([sp.diff(value, p) for p in THETA])
    if d is not None:
        # move the student only: the targets are still symbols here
        gradient = gradient.subs({p: p + delta * di for p, di in zip(THETA, d)}, simultaneous=True)
    teacher = tanh_mlp([p + eps * vi for p, vi in zip(THETA, v)], x)
    return -gradient.subs(dict(zip(targets, teacher))), eps, delta


SETTING = (
    r"The tanh MLP $f_\theta(x) = W_2\tanh(W_1x+b_1)+b_2$ with 2 inputs, 2 hidden units and "
    r"3 outputs; all 15 weights are symbols. The input is $x = (\tfrac12,-1)$ and $v$, $d$ are "
    r"fixed rational directions. The student's exact update is expanded in $\varepsilon$ "
    r"(and $\delta$) and its coefficients compared with the closed forms."
)


def concrete_network(slow_steps: bool = False) -> Derivation:
    """Lemma 1, the second-order coefficient, the init-distance law and M = 0, on the tanh MLP.

    Args:
        slow_steps: also match the eps^2 coefficient for softmax cross-entropy by expanding the
            exact update (about a minute of sympy; run by the slow test, not by the export).

    Returns:
        The derivation, every step checked.

    """
    derivation = Derivation(
        key="concrete_network",
        title="Exact check on a concrete network with symbolic weights",
        statement=(
            r"On the tanh MLP the exact $\langle\Delta\theta_S(\varepsilon), v\rangle$ has "
            r"$\varepsilon$-coefficients $A$ and $B$, $\Delta\theta_S$ has first-order terms "
            r"$Kv$ and $-Kd$, and a one-logit softmax student does not move."
        ),
        setting=SETTING
        + (
            ""
            if slow_steps
            else r" The $\varepsilon^2$ coefficient under softmax cross-entropy is matched the "
            r"same way by the slow test (about a minute of sympy); the lambdified $B$ is compared "
            r"with the \texttt{torch.func} engine by the test suite."
        ),
    )
    x = sp.Matrix([sp.Rational(1, 2), -1])
    v, d = _rational_vector(1, PARAMETERS), _rational_vector(2, PARAMETERS)
    z0, jacobian, u, w = _network_derivatives(x, v)
    for loss in (SQUARED, SOFT_CROSS_ENTROPY):
        update, eps, _ = exact_student_update(loss, x, v)
        hessian, a_value, b_value = _closed_form_pieces(loss, z0, u, w)
        alignment = (update.T * v)[0]
        derivation.series(
            f"{loss.name}-first-order",
            alignment,
            eps,
            1,
            a_value,
            (
                rf"[\varepsilon^1]\,\langle\Delta\theta_S, v\rangle_{{\mathrm{{{loss.short}}}}}",
                r"u^\top M u = A",
            ),
            f"Lemma 1 for $\\ell = {loss.latex}$",
        )
        if loss is SOFT_CROSS_ENTROPY and not slow_steps:
            continue
        derivation.series(
            f"{loss.name}-second-order",
            alignment,
            eps,
            2,
            b_value,
            (
                rf"[\varepsilon^2]\,\langle\Delta\theta_S, v\rangle_{{\mathrm{{{loss.short}}}}}",
                r"\tfrac12\big(u^\top M w - u^\top G[u,u]\big) = B",
            ),
            "the second-order coefficient, $w = D^2 f[v,v]$",
        )
    update, eps, delta = exact_student_update(SQUARED, x, v, d)
    gauss_newton = jacobian.T * jacobian
    derivation.series(
        "teacher-pull",
        update.subs(delta, 0),
        eps,
        1,
        gauss_newton * v,
        (r"\partial_\varepsilon\Delta\theta_S(0,0)", "K v"),
        r"all 15 coordinates, squared error ($K = J^\top J$)",
    )
    derivation.series(
        "base-pull",
        update.subs(eps, 0),
        delta,
        1,
        -gauss_newton * d,
        (r"\partial_\delta\Delta\theta_S(0,0)", "-K d"),
        "the init-distance law, all 15 coordinates",
    )
    one_logit = ImitationLossFormula(
        "one_logit",
        "one",
        r"\ell_{\{3\}}",
        lambda z, y: loss_formulas.soft_cross_entropy(z[2:, :], y[2:, :]),
    )
    update, _, _ = exact_student_update(one_logit, x, v)
    derivation.identity(
        "one-logit",
        update,
        sp.zeros(PARAMETERS, 1),
        (r"\Delta\theta_S(\varepsilon)\big|_{S=\{3\}}", "0"),
        r"exactly, for every $\varepsilon$: $M = 0$ (softmax of one logit)",
    )
    return derivation


# --------------------------------------------------------------------------------------------
# lambdified coefficients for the symbolic <-> numeric cross-check
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LambdifiedCoefficients:
    """Numeric functions of (theta, x, v) built from the symbolic expressions, for one input x.

    Attributes:
        first_order: A(theta, x, v) = u^T M u.
        second_order: B(theta, x, v) = (1/2)(u^T M w - u^T G[u, u]).
        gauss_newton: K(theta, x) = J^T M J, a (15, 15) array.

    """

    first_order: Callable[..., float]
    second_order: Callable[..., float]
    gauss_newton: Callable[..., np.ndarray]

    def mean_over_inputs(
        self, theta: np.ndarray, inputs: np.ndarray, v: np.ndarray
    ) -> tuple[float, float, np.ndarray]:
        """(E_x A, E_x B, E_x K) over the rows of ``inputs``: the engine's convention."""
        a_values = [self.first_order(*theta, *x, *v) for x in inputs]
        b_values = [self.second_order(*theta, *x, *v) for x in inputs]
        matrices = [np.asarray(self.gauss_newton(*theta, *x), dtype=float) for x in inputs]
        return float(np.mean(a_values)), float(np.mean(b_values)), np.mean(matrices, axis=0)


@functools.lru_cache(maxsize=8)
def lambdified_coefficients(loss_name: str, temperature: float = 1.0) -> LambdifiedCoefficients:
    """Lambdify A, B and K for ``squared`` (c = 1), ``softmax_ce`` or ``kl`` (temperature tau)."""
    formulas = {"squared": SQUARED, "softmax_ce": SOFT_CROSS_ENTROPY}
    loss = kl_formula(sp.nsimplify(temperature)) if loss_name == "kl" else formulas[loss_name]
    x = sp.Matrix(sp.symbols(f"x1:{INPUTS + 1}", real=True))
    v = sp.Matrix(sp.symbols(f"v1:{PARAMETERS + 1}", real=True))
    z0, jacobian, u, w = _network_derivatives(x, v)
    hessian, a_value, b_value = _closed_form_pieces(loss, z0, u, w)
    arguments = [*THETA, *x, *v]
    return LambdifiedCoefficients(
        first_order=sp.lambdify(arguments, a_value, modules="numpy", cse=True),
        second_order=sp.lambdify(arguments, b_value, modules="numpy", cse=True),
        gauss_newton=sp.lambdify(
            [*THETA, *x], jacobian.T * hessian * jacobian, modules="numpy", cse=True
        ),
    )
