"""Lemma 1, Theorem 1, the second-order coefficient and the init-distance law for generic jets.

theory/alignment.md, sections 2-4. sympy works on k = 2 outputs and p = 3 parameters for one
input x (E_x is linear, so every per-input identity holds for the mean over inputs). The network
and the loss are *generic jets*: truncated Taylor polynomials whose every coefficient is a free
symbol,

    f(theta_0 + delta) = z_0 + J delta + (1/2) [delta^T W_i delta]_i,
    l(z_0 + zeta, z_0 + eta) = sum over monomials of degree 1..3 in (zeta, eta), free coefficients,

restricted only by the assumption that l is minimized at z = y (grad_z l(y, y) = 0 for all y),
which is imposed by solving the linear equations it puts on the loss's coefficients. A Taylor
coefficient of order n in eps of a composition depends only on the derivatives of order <= n + 1
of its parts, which these jets leave free, so an identity between coefficients checked here holds
for every smooth network and loss of these sizes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from sublim_theory.symbolic.steps import Derivation

OUTPUTS = 2
PARAMETERS = 3


@dataclass(frozen=True)
class GenericJets:
    """The symbols of the generic instance (see the module docstring).

    Attributes:
        z0: f(theta_0), shape (k, 1).
        jacobian: J = df/dtheta at theta_0, shape (k, p).
        second: W_i = d^2 f_i/dtheta^2 at theta_0 (symmetric p x p), one per output.
        v, d: the teacher's direction and the student's init offset direction, shape (p, 1).
        eps, delta, alpha: teacher step, init distance, student learning rate.
        zeta, eta: output and target offsets from z_0, shape (k, 1).
        free_loss: the cubic loss jet before the minimization assumption.
        minimized: the coefficient values that make grad_z l(y, y) = 0 for all y.

    """

    z0: sp.Matrix
    jacobian: sp.Matrix
    second: tuple[sp.Matrix, ...]
    v: sp.Matrix
    d: sp.Matrix
    eps: sp.Symbol
    delta: sp.Symbol
    alpha: sp.Symbol
    zeta: sp.Matrix
    eta: sp.Matrix
    free_loss: sp.Expr
    minimized: dict[sp.Symbol, sp.Expr]

    @property
    def loss(self) -> sp.Expr:
        """l(z_0 + zeta, z_0 + eta) minimized at zeta = eta."""
        return self.free_loss.subs(self.minimized)

    def network(self, displacement: sp.Matrix) -> sp.Matrix:
        """f(theta_0 + displacement) = z_0 + J delta + (1/2)[delta^T W_i delta]_i."""
        quadratic = sp.Matrix([(displacement.T * w * displacement)[0] / 2 for w in self.second])
        return self.z0 + self.jacobian * displacement + quadratic

    def output_gradient(self, loss: sp.Expr, zeta: sp.Matrix, eta: sp.Matrix) -> sp.Matrix:
        """grad_z l at (z_0 + zeta, z_0 + eta)."""
        gradient = sp.Matrix([sp.diff(loss, s) for s in self.zeta])
        return gradient.subs(dict(zip(list(self.zeta) + list(self.eta), list(zeta) + list(eta))))

    def output_hessian(self) -> sp.Matrix:
        """M = Hess_zz l at z = y = z_0 (of the minimized loss)."""
        origin = {s: 0 for s in list(self.zeta) + list(self.eta)}
        return sp.hessian(self.loss, list(self.zeta)).subs(origin)

    def target_curvature(self, u: sp.Matrix) -> sp.Matrix:
        """G[u, u] = d^2/ds^2 grad_z l(z_0, z_0 + s u) at s = 0."""
        s = sp.Symbol("s")
        gradient = self.output_gradient(self.loss, sp.zeros(OUTPUTS, 1), s * u)
        return gradient.diff(s, 2).subs(s, 0)

    def student_update(self, student_offset: sp.Matrix) -> sp.Matrix:
        """dtheta_S = -grad_theta l(f(theta), f(theta_0 + eps v)) at theta = theta_0 + student_offset."""
        position = sp.Matrix(sp.symbols(f"q1:{PARAMETERS + 1}"))
        targets = self.network(self.eps * self.v) - self.z0
        loss = self.loss.subs(dict(zip(self.eta, targets)))
        loss = loss.subs(dict(zip(self.zeta, self.network(position) - self.z0)))
        gradient = sp.Matrix([sp.diff(loss, q) for q in position])
        return -gradient.subs(dict(zip(position, student_offset)))

    def gauss_newton(self) -> sp.Matrix:
        """K = J^T M J."""
        return self.jacobian.T * self.output_hessian() * self.jacobian


def _symmetric(prefix: str, size: int) -> sp.Matrix:
    return sp.Matrix(size, size, lambda a, b: sp.Symbol(f"{prefix}_{min(a, b) + 1}{max(a, b) + 1}"))


@functools.lru_cache(maxsize=1)
def generic_jets() -> GenericJets:
    """Build the generic instance and impose the minimization assumption on the loss jet."""
    zeta = sp.Matrix(sp.symbols(f"zeta1:{OUTPUTS + 1}"))
    eta = sp.Matrix(sp.symbols(f"eta1:{OUTPUTS + 1}"))
    variables = list(zeta) + list(eta)
    monomials = sorted(
        (m for m in sp.itermonomials(variables, 3) if m != 1), key=sp.default_sort_key
    )
    coefficients = sp.symbols(f"c0:{len(monomials)}")
    free_loss = sum((c * m for c, m in zip(coefficients, monomials)), sp.Integer(0))
    on_diagonal = [
        sp.diff(free_loss, z).subs(dict(zip(zeta, eta), simultaneous=True)) for z in zeta
    ]
    equations = [c for g in on_diagonal for c in sp.Poly(g, *eta).coeffs()]
    (minimized,) = sp.solve(equations, coefficients, dict=True)
    return GenericJets(
        z0=sp.Matrix(sp.symbols(f"z0_1:{OUTPUTS + 1}")),
        jacobian=sp.Matrix(OUTPUTS, PARAMETERS, lambda i, a: sp.Symbol(f"J_{i + 1}{a + 1}")),
        second=tuple(_symmetric(f"W{i + 1}", PARAMETERS) for i in range(OUTPUTS)),
        v=sp.Matrix(sp.symbols(f"v1:{PARAMETERS + 1}")),
        d=sp.Matrix(sp.symbols(f"d1:{PARAMETERS + 1}")),
        eps=sp.Symbol("epsilon"),
        delta=sp.Symbol("delta"),
        alpha=sp.Symbol("alpha", positive=True),
        zeta=zeta,
        eta=eta,
        free_loss=free_loss,
        minimized=minimized,
    )


SETTING = (
    r"Generic jets with $k=2$ outputs and $p=3$ parameters, one input $x$: "
    r"$f(\theta_0+\delta)=z_0+J\delta+\tfrac12[\delta^\top W_i\delta]_i$ and a cubic loss jet "
    r"in $(z-z_0,\,y-z_0)$, every coefficient a free symbol. A coefficient of order $n$ in "
    r"$\varepsilon$ depends only on derivatives that these jets leave free, so each checked "
    r"identity holds for every smooth $f$ and $\ell$ of these sizes; $\mathbb{E}_x$ is linear, "
    r"so it holds for the mean over inputs."
)

SMOOTHNESS = (
    r"\ell \in C^3,\ f \in C^2",
    r"near $\theta_0$: what the $O(\varepsilon^2)$ remainder of a first-order Taylor expansion "
    "needs; the jets carry every derivative the checked coefficients use",
)
SMOOTHNESS_SECOND_ORDER = (
    r"\ell \in C^4,\ f \in C^3",
    r"near $\theta_0$: one more derivative of each than Lemma 1, for the $O(\varepsilon^3)$ "
    r"remainder; the coefficient $B$ itself uses derivatives up to $D^3\ell$ and $D^2 f$",
)
MINIMUM = (
    r"\nabla_z \ell(y, y) = 0 \ \text{for all } y",
    r"$\ell(\cdot, y)$ is minimized at $z = y$; imposed on the loss jet by solving the linear "
    r"equations it puts on the coefficients",
)
PSD = (
    r"M = \nabla^2_{zz}\ell(y,y) \succeq 0",
    r"second-order condition at the minimum $z = y$; for each loss of the next section it is "
    r"proven by an explicit sum of squares, never asked of sympy",
)


def _mixed_derivative_identity(jets: GenericJets, u: sp.Matrix) -> sp.Matrix:
    """G[u,u] + D^3_z l[u,u] + 2 (D_y Hess_zz l)[u] u at the origin, for the FREE loss jet."""
    origin = {s: 0 for s in list(jets.zeta) + list(jets.eta)}
    zeta, eta, loss = list(jets.zeta), list(jets.eta), jets.free_loss

    def contracted(i: int, second: list[sp.Symbol], third: list[sp.Symbol]) -> sp.Expr:
        return sum(
            sp.diff(loss, zeta[i], second[j], third[k]).subs(origin) * u[j] * u[k]
            for j in range(OUTPUTS)
            for k in range(OUTPUTS)
        )

    return sp.Matrix(
        [
            contracted(i, eta, eta) + contracted(i, zeta, zeta) + 2 * contracted(i, zeta, eta)
            for i in range(OUTPUTS)
        ]
    )


def lemma() -> Derivation:
    """Lemma 1: d/dy grad_z l = -M at z = y, dtheta_S = eps J^T M J v + O(eps^2), <., v> = eps A."""
    jets = generic_jets()
    derivation = Derivation(
        key="lemma",
        title="Lemma 1 (shared initialization, first order)",
        statement=(
            r"Let $\ell$ be minimized at $z=y$, $\ell \in C^3$ and $f \in C^2$ near $\theta_0$, "
            r"$M=\nabla^2_{zz}\ell(y,y)$, $u = Jv$ and "
            r"$\Delta\theta_S = -\nabla_\theta \mathbb{E}_x\,\ell(f_\theta(x), f_{\theta_0+"
            r"\varepsilon v}(x))|_{\theta_0}$. Then $\partial_y\nabla_z\ell|_{z=y} = -M$, "
            r"$\Delta\theta_S = \varepsilon\,\mathbb{E}_x[J^\top M J]\,v + O(\varepsilon^2)$ and "
            r"$\langle\Delta\theta_S, v\rangle = \varepsilon A + O(\varepsilon^2)$ with "
            r"$A = \mathbb{E}_x[u^\top M u] \ge 0$."
        ),
        setting=SETTING,
    )
    derivation.assume("smooth", *SMOOTHNESS)
    derivation.assume("minimum", *MINIMUM)
    zeta, eta = jets.zeta, jets.eta
    diagonal = dict(zip(zeta, eta))
    derivation.substitution(
        "gradient-vanishes",
        jets.output_gradient(jets.free_loss, eta, eta),
        jets.minimized,
        sp.zeros(OUTPUTS, 1),
        (r"\nabla_z\ell(y,y)", "0"),
        "the loss jet with the coefficients solved from (minimum)",
    )
    free_gradient_on_diagonal = jets.output_gradient(jets.free_loss, eta, eta)
    hessian_zz = sp.hessian(jets.free_loss, list(zeta)).subs(diagonal, simultaneous=True)
    hessian_zy = sp.Matrix(
        OUTPUTS, OUTPUTS, lambda i, j: sp.diff(jets.free_loss, zeta[i], eta[j])
    ).subs(diagonal, simultaneous=True)
    derivation.identity(
        "chain-rule-on-diagonal",
        free_gradient_on_diagonal.jacobian(list(eta)),
        hessian_zz + hessian_zy,
        (
            r"\frac{\partial}{\partial y}\big[\nabla_z\ell(y,y)\big]",
            r"\big[\nabla^2_{zz}\ell + \partial_y\nabla_z\ell\big](y,y)",
        ),
        "chain rule, for any cubic loss jet (before the assumption)",
    )
    derivation.substitution(
        "cross-derivative",
        hessian_zy,
        jets.minimized,
        -hessian_zz.subs(jets.minimized),
        (r"\partial_y\nabla_z\ell(z,y)\big|_{z=y}", r"-\nabla^2_{zz}\ell(y,y) = -M"),
        r"the left side of the previous line is $0$ by (minimum), for every $y$",
    )
    derivation.assume("psd", *PSD)

    update = jets.student_update(sp.zeros(PARAMETERS, 1))
    targets = jets.network(jets.eps * jets.v)
    derivation.identity(
        "student-update",
        update,
        -jets.jacobian.T * jets.output_gradient(jets.loss, sp.zeros(OUTPUTS, 1), targets - jets.z0),
        (
            r"\Delta\theta_S(\varepsilon)",
            r"-J^\top\,\nabla_z\ell\big(z_0,\ f(\theta_0+\varepsilon v)\big)",
        ),
        r"chain rule; the student is evaluated at $\theta_0$, so $\varepsilon$ enters only "
        r"through the targets",
    )
    eps = jets.eps
    derivation.series(
        "zeroth-order",
        update,
        eps,
        0,
        sp.zeros(PARAMETERS, 1),
        (r"[\varepsilon^0]\,\Delta\theta_S", "0"),
        r"$\nabla_z\ell(z_0,z_0)=0$ by (minimum)",
    )
    gauss_newton = jets.gauss_newton()
    derivation.series(
        "first-order",
        update,
        eps,
        1,
        gauss_newton * jets.v,
        (r"[\varepsilon^1]\,\Delta\theta_S", r"J^\top M J\,v"),
        r"$\frac{d}{d\varepsilon}f(\theta_0+\varepsilon v)|_0 = Jv$ and (cross-derivative)",
    )
    u = jets.jacobian * jets.v
    first_order_a = (u.T * jets.output_hessian() * u)[0]
    derivation.identity(
        "inner-product",
        (jets.v.T * gauss_newton * jets.v)[0],
        first_order_a,
        (r"v^\top J^\top M J\,v", r"u^\top M u,\quad u = Jv"),
        "regrouping the product",
    )
    derivation.series(
        "alignment",
        (update.T * jets.v)[0],
        eps,
        1,
        first_order_a,
        (r"[\varepsilon^1]\,\langle\Delta\theta_S, v\rangle", r"u^\top M u = A \ \ge 0"),
        r"(first-order) and (inner-product); $A \ge 0$ by (psd)",
    )
    return derivation


def corollary() -> Derivation:
    """Theorem 1: for v = -grad L_T, L_T(theta_0 + alpha dtheta_S) = L_T - alpha eps A + O(eps^2)."""
    jets = generic_jets()
    derivation = Derivation(
        key="corollary",
        title="Theorem 1 (the student's teacher loss falls)",
        statement=(
            r"Under the hypotheses of Lemma 1 and $L_T \in C^2$, if the teacher's direction is "
            r"$v=-\nabla L_T(\theta_0)$ and the student takes the step "
            r"$\theta_0+\alpha\Delta\theta_S$ with a fixed $\alpha > 0$, then "
            r"$L_T(\theta_0+\alpha\Delta\theta_S) = L_T(\theta_0) - \alpha\varepsilon A + "
            r"O(\varepsilon^2)$: either $A = 0$ (then $Jv$ lies in the null space of $M$ almost "
            r"surely) or the teacher loss falls for small enough $\varepsilon$."
        ),
        setting=SETTING + r" The teacher loss is a generic quadratic jet in $\theta$.",
    )
    derivation.assume(
        "smooth",
        r"L_T \in C^2,\ \ell \in C^3,\ f \in C^2",
        r"near $\theta_0$: Taylor expansions of the teacher loss and of Lemma 1",
    )
    derivation.assume(
        "positive-step",
        r"\alpha > 0",
        r"the student steps along $\Delta\theta_S$; the sign of $-\alpha\varepsilon A$ needs it",
    )
    derivation.assume("minimum", *MINIMUM)
    gradient = sp.Matrix(sp.symbols(f"g1:{PARAMETERS + 1}"))
    hessian = _symmetric("H", PARAMETERS)
    base = sp.Symbol("L_0")

    def teacher_loss(offset: sp.Matrix) -> sp.Expr:
        return base + (gradient.T * offset)[0] + (offset.T * hessian * offset)[0] / 2

    derivation.assume(
        "teacher-direction",
        r"v = -\nabla L_T(\theta_0)",
        "the teacher took one gradient step on its trait loss",
    )
    direction = {v: -g for v, g in zip(jets.v, gradient)}
    update = jets.student_update(sp.zeros(PARAMETERS, 1)).subs(direction)
    stepped = teacher_loss(jets.alpha * update)
    derivation.series(
        "unchanged-at-zero",
        stepped,
        jets.eps,
        0,
        base,
        (r"[\varepsilon^0]\,L_T(\theta_0+\alpha\Delta\theta_S)", r"L_T(\theta_0)"),
        r"$\Delta\theta_S = O(\varepsilon)$ (Lemma 1, zeroth-order)",
    )
    u = (jets.jacobian * jets.v).subs(direction)
    first_order_a = (u.T * jets.output_hessian() * u)[0]
    derivation.series(
        "loss-falls",
        stepped,
        jets.eps,
        1,
        -jets.alpha * first_order_a,
        (
            r"[\varepsilon^1]\,L_T(\theta_0+\alpha\Delta\theta_S)",
            r"\alpha\,\nabla L_T^\top J^\top M J\,v = -\alpha A",
        ),
        r"Lemma 1 (first-order) and (teacher-direction)",
    )
    return derivation


def second_order() -> Derivation:
    """B = (1/2)(u^T M w - u^T G[u, u]) and the critical step eps* = A/|B| when B < 0."""
    jets = generic_jets()
    derivation = Derivation(
        key="second_order",
        title="The second-order coefficient and the critical step",
        statement=(
            r"$\langle\Delta\theta_S, v\rangle = \varepsilon A + \varepsilon^2 B + "
            r"O(\varepsilon^3)$ with $B=\tfrac12\mathbb{E}_x[u^\top M w - u^\top G[u,u]]$, "
            r"$w = D^2 f(\theta_0)[v,v]$, $G = \partial_y^2\nabla_z\ell(z_0,y)|_{y=z_0}$ (a "
            r"mixed derivative: one in $z$, two in $y$), when $\ell \in C^4$ and $f \in C^3$ "
            r"near $\theta_0$. $G[u,u] = -D^3_z\ell[u,u] - 2(D_y\nabla^2_{zz}\ell)[u]\,u$, which "
            r"is $-D^3_z\ell[u,u]$ only when $\nabla^2_{zz}\ell$ does not depend on $y$. If "
            r"$B<0$ the truncated quadratic $\varepsilon A + \varepsilon^2 B$ is positive exactly "
            r"for $0<\varepsilon<\varepsilon^* = A/|B|$; whether $\varepsilon^*$ is the exact "
            r"alignment's sign change depends on the $O(\varepsilon^3)$ remainder there, which "
            r"this derivation does not bound."
        ),
        setting=SETTING,
    )
    derivation.assume("smooth", *SMOOTHNESS_SECOND_ORDER)
    derivation.assume("minimum", *MINIMUM)
    t = sp.Symbol("t")
    w = jets.network(t * jets.v).diff(t, 2).subs(t, 0)
    derivation.identity(
        "second-derivative",
        sp.Matrix([(jets.v.T * s * jets.v)[0] for s in jets.second]),
        w,
        (r"w = D^2 f(\theta_0)[v,v]", r"\frac{d^2}{dt^2} f(\theta_0 + t v)\big|_{t=0}"),
        "definition (a jvp of a jvp)",
    )
    u = jets.jacobian * jets.v
    update = jets.student_update(sp.zeros(PARAMETERS, 1))
    hessian = jets.output_hessian()
    coefficient_b = ((u.T * hessian * w)[0] - (u.T * jets.target_curvature(u))[0]) / 2
    derivation.series(
        "second-order",
        (update.T * jets.v)[0],
        jets.eps,
        2,
        coefficient_b,
        (
            r"[\varepsilon^2]\,\langle\Delta\theta_S, v\rangle",
            r"\tfrac12\big(u^\top M w - u^\top G[u,u]\big) = B",
        ),
        r"$f(\theta_0+\varepsilon v) = z_0 + \varepsilon u + \tfrac{\varepsilon^2}{2}w + "
        r"O(\varepsilon^3)$; expand $\nabla_z\ell(z_0,\cdot)$ to second order and use "
        r"(minimum)",
    )
    derivation.substitution(
        "mixed-derivative",
        _mixed_derivative_identity(jets, u),
        jets.minimized,
        sp.zeros(OUTPUTS, 1),
        (
            r"G[u,u] + D^3_z\ell[u,u] + 2\,(D_y\nabla^2_{zz}\ell)[u]\,u",
            r"0 \ \text{at } z = y = z_0",
        ),
        r"second $s$-derivative of $\nabla_z\ell(z_0+su, z_0+su) = 0$ (minimum); so $G$ is "
        r"$-D^3_z\ell$ only when $\nabla^2_{zz}\ell$ does not depend on $y$",
    )
    a_value, b_size = sp.symbols("A b", positive=True)
    eps = sp.Symbol("epsilon", positive=True)
    critical = a_value / b_size
    quadratic = eps * a_value - eps**2 * b_size
    derivation.assume("negative-b", r"B = -|B| < 0", "the case where a critical step exists")
    derivation.identity(
        "factorization",
        quadratic,
        eps * b_size * (critical - eps),
        (r"\varepsilon A + \varepsilon^2 B", r"\varepsilon\,|B|\,(\varepsilon^* - \varepsilon)"),
        r"with $\varepsilon^* = A/|B|$: positive for $0 < \varepsilon < \varepsilon^*$",
    )
    derivation.substitution(
        "critical-step",
        quadratic,
        {eps: critical},
        sp.Integer(0),
        (r"\big(\varepsilon A + \varepsilon^2 B\big)\big|_{\varepsilon = A/|B|}", "0"),
        "the truncated quadratic (not the exact alignment) vanishes at the critical step",
    )
    return derivation


def init_distance() -> Derivation:
    """dtheta_S ~= K(eps v - delta d) for a student at theta_0 + delta d, and the cosine law."""
    jets = generic_jets()
    derivation = Derivation(
        key="init_distance",
        title="Different initializations: the init-distance law",
        statement=(
            r"For a student initialized at $\theta_0+\delta d$, to first order in "
            r"$(\varepsilon,\delta)$, $\Delta\theta_S \approx K(\varepsilon v - \delta d)$ with "
            r"$K = \mathbb{E}_x[J^\top M J]$. If $Kd$ is orthogonal to $v$ and to $Kv$, "
            r"$\cos(\Delta\theta_S, v) \approx \cos_0/\sqrt{1+(\delta/\delta_c)^2}$ with "
            r"$\delta_c = \varepsilon\|Kv\|/\|Kd\|$. (A prediction of this project.)"
        ),
        setting=SETTING,
    )
    derivation.assume("smooth", *SMOOTHNESS)
    derivation.assume("minimum", *MINIMUM)
    eps, delta = jets.eps, jets.delta
    update = jets.student_update(delta * jets.d)
    gauss_newton = jets.gauss_newton()
    derivation.series(
        "constant-term",
        update.subs(delta, 0),
        eps,
        0,
        sp.zeros(PARAMETERS, 1),
        (r"\Delta\theta_S(0, 0)", "0"),
        "the student already imitates the teacher when both sit at $\\theta_0$",
    )
    derivation.series(
        "teacher-pull",
        update.subs(delta, 0),
        eps,
        1,
        gauss_newton * jets.v,
        (r"\partial_\varepsilon\Delta\theta_S(0,0)", r"K v"),
        "Lemma 1 (first-order)",
    )
    derivation.series(
        "base-pull",
        update.subs(eps, 0),
        delta,
        1,
        -gauss_newton * jets.d,
        (r"\partial_\delta\Delta\theta_S(0,0)", r"-K d"),
        r"the term with $\partial_\delta J$ multiplies $\nabla_z\ell(z_0,z_0) = 0$; the rest "
        r"is $-J^\top M J d$",
    )
    derivation.identity(
        "symmetric",
        gauss_newton.T,
        gauss_newton,
        (r"K^\top", "K"),
        "$M$ is a Hessian, hence symmetric",
    )
    first_order = gauss_newton * (eps * jets.v - delta * jets.d)
    derivation.identity(
        "norm-expansion",
        (first_order.T * first_order)[0],
        eps**2 * ((gauss_newton * jets.v).T * gauss_newton * jets.v)[0]
        - 2 * eps * delta * ((gauss_newton * jets.v).T * gauss_newton * jets.d)[0]
        + delta**2 * ((gauss_newton * jets.d).T * gauss_newton * jets.d)[0],
        (
            r"\|K(\varepsilon v - \delta d)\|^2",
            r"\varepsilon^2\|Kv\|^2 - 2\varepsilon\delta\langle Kv, Kd\rangle + "
            r"\delta^2\|Kd\|^2",
        ),
        "bilinearity",
    )
    derivation.identity(
        "alignment-expansion",
        (first_order.T * jets.v)[0],
        eps * (jets.v.T * gauss_newton * jets.v)[0] - delta * (jets.d.T * gauss_newton * jets.v)[0],
        (
            r"\langle K(\varepsilon v - \delta d), v\rangle",
            r"\varepsilon\, v^\top K v - \delta\, d^\top K v",
        ),
        "(symmetric); no fixed sign once $\\delta|d^\\top K v| > \\varepsilon v^\\top K v$",
    )
    derivation.assume(
        "orthogonal-offset",
        r"\langle Kv, Kd\rangle = 0,\ \ d^\top K v = 0",
        r"the offset direction $d$ is unrelated to $v$ (holds on average for a random $d$)",
    )
    a_value, kv, kd, v_norm = sp.symbols("a n_Kv n_Kd n_v", positive=True)
    cross, offset_alignment = sp.symbols("m c", real=True)
    e, dl = sp.symbols("epsilon delta", positive=True)
    cosine = (e * a_value - dl * offset_alignment) / (
        sp.sqrt(e**2 * kv**2 - 2 * e * dl * cross + dl**2 * kd**2) * v_norm
    )
    cosine_at_zero = a_value / (kv * v_norm)
    critical_distance = e * kv / kd
    derivation.substitution(
        "cosine-law",
        cosine,
        {cross: 0, offset_alignment: 0},
        cosine_at_zero / sp.sqrt(1 + (dl / critical_distance) ** 2),
        (
            r"\cos(\Delta\theta_S, v)",
            r"\frac{\cos_0}{\sqrt{1 + (\delta/\delta_c)^2}},\quad "
            r"\cos_0 = \frac{v^\top K v}{\|Kv\|\,\|v\|},\ \delta_c = "
            r"\frac{\varepsilon\|Kv\|}{\|Kd\|}",
        ),
        "(norm-expansion), (alignment-expansion) and (orthogonal-offset)",
    )
    return derivation


__all__ = ["GenericJets", "corollary", "generic_jets", "init_distance", "lemma", "second_order"]
