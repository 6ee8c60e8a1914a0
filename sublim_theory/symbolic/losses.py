"""The output curvature M of each imitation loss, derived from its formula (theory/alignment.md, s. 2).

sympy works on k = 3 outputs with symbols z (outputs), y (targets), u (a direction) and a positive
temperature tau. Softmax is written exp(z_i) / sum_j exp(z_j) and log-softmax as
z_i - log sum_j exp(z_j), so no log(exp(.)) needs simplifying. Positive semidefiniteness of M is
proven by an explicit sum of squares (the variance identity), never asked of sympy.
The closed forms checked here are the ones ``sublim_theory.engine.losses`` implements.
"""

from __future__ import annotations

import sympy as sp

from sublim_theory.symbolic.steps import Derivation

__all__ = [
    "OUTPUTS",
    "SETTING",
    "cross_derivative_at_target",
    "gradient",
    "kl_derivation",
    "kl_divergence",
    "log_softmax",
    "output_hessian_at_target",
    "soft_cross_entropy",
    "soft_cross_entropy_derivation",
    "softmax",
    "softmax_jacobian",
    "squared_error",
    "squared_error_derivation",
    "subset_derivation",
    "target_curvature",
]

OUTPUTS = 3

SETTING = (
    r"$k=3$ outputs; $z$, $y$, $u$ symbols, $\tau>0$; "
    r"$p = \operatorname{softmax}(z)$ written as $e^{z_i}/\sum_j e^{z_j}$."
)


def _vector(name: str, size: int = OUTPUTS) -> sp.Matrix:
    return sp.Matrix(sp.symbols(f"{name}1:{size + 1}", real=True))


def softmax(z: sp.Matrix) -> sp.Matrix:
    """Softmax as a column: p_i = exp(z_i) / sum_j exp(z_j)."""
    exponentials = z.applyfunc(sp.exp)
    return exponentials / sum(exponentials)


def log_softmax(z: sp.Matrix) -> sp.Matrix:
    """Log-softmax as a column: z_i - log sum_j exp(z_j)."""
    return z - sp.ones(z.rows, 1) * sp.log(sum(z.applyfunc(sp.exp)))


def squared_error(z: sp.Matrix, y: sp.Matrix, scale: sp.Expr) -> sp.Expr:
    """Squared error: l = (c/2) ||z - y||^2."""
    return scale * ((z - y).T * (z - y))[0] / 2


def soft_cross_entropy(z: sp.Matrix, y: sp.Matrix) -> sp.Expr:
    """Soft-target cross-entropy: l = -softmax(y) . log softmax(z)."""
    return -(softmax(y).T * log_softmax(z))[0]


def kl_divergence(z: sp.Matrix, y: sp.Matrix, temperature: sp.Expr) -> sp.Expr:
    """KL at temperature tau: l = KL(softmax(y/tau) || softmax(z/tau)), no tau^2 factor."""
    target = softmax(y / temperature)
    return (target.T * (log_softmax(y / temperature) - log_softmax(z / temperature)))[0]


def gradient(loss: sp.Expr, z: sp.Matrix) -> sp.Matrix:
    """grad_z l as a column."""
    return sp.Matrix([sp.diff(loss, s) for s in z])


def output_hessian_at_target(loss: sp.Expr, z: sp.Matrix, y: sp.Matrix) -> sp.Matrix:
    """M = Hess_zz l at y = z (a function of z)."""
    return sp.hessian(loss, list(z)).subs(dict(zip(y, z)))


def cross_derivative_at_target(loss: sp.Expr, z: sp.Matrix, y: sp.Matrix) -> sp.Matrix:
    """d/dy grad_z l at y = z."""
    return gradient(loss, z).jacobian(list(y)).subs(dict(zip(y, z)))


def target_curvature(loss: sp.Expr, z: sp.Matrix, y: sp.Matrix, u: sp.Matrix) -> sp.Matrix:
    """G[u, u] = d^2/ds^2 grad_z l(z, z + s u) at s = 0."""
    s = sp.Symbol("s")
    moved = gradient(loss, z).subs(dict(zip(y, z + s * u)), simultaneous=True)
    return moved.diff(s, 2).subs(s, 0)


def softmax_jacobian(p: sp.Matrix) -> sp.Matrix:
    """diag(p) - p p^T."""
    return sp.diag(*p) - p * p.T


def _softmax_second_derivative(p: sp.Matrix, u: sp.Matrix) -> sp.Matrix:
    """D^2 softmax[u, u] = p * ((u - <p,u>)^2 - Var_p(u)), the engine's closed form."""
    mean = (p.T * u)[0]
    centered = u - mean * sp.ones(u.rows, 1)
    variance = sum(p[i] * centered[i] ** 2 for i in range(u.rows))
    return sp.Matrix([p[i] * (centered[i] ** 2 - variance) for i in range(u.rows)])


def _check_minimum(derivation: Derivation, loss: sp.Expr, z: sp.Matrix, y: sp.Matrix) -> None:
    derivation.substitution(
        "gradient-vanishes",
        gradient(loss, z),
        dict(zip(y, z)),
        sp.zeros(z.rows, 1),
        (r"\nabla_z\ell(z,y)\big|_{y=z}", "0"),
        "the loss is minimized at $z=y$",
    )


def _check_cross(derivation: Derivation, loss: sp.Expr, z: sp.Matrix, y: sp.Matrix) -> None:
    derivation.identity(
        "cross-derivative",
        cross_derivative_at_target(loss, z, y),
        -output_hessian_at_target(loss, z, y),
        (r"\partial_y\nabla_z\ell\big|_{y=z}", "-M"),
        "Lemma 1, checked for this loss directly",
    )


def squared_error_derivation() -> Derivation:
    """M = c I, G = 0, u^T M u = c ||u||^2."""
    z, y, u = _vector("z"), _vector("y"), _vector("u")
    scale = sp.Symbol("c", positive=True)
    loss = squared_error(z, y, scale)
    derivation = Derivation(
        key="squared_error",
        title=r"Squared error $\ell = \tfrac{c}{2}\|z-y\|^2$",
        statement=(
            r"$M = cI$, $G = 0$, so $A = c\,\mathbb{E}\|u\|^2$ and "
            r"$B = \tfrac c2\mathbb{E}[u\cdot w]$."
        ),
        setting=SETTING + r" $c>0$; PyTorch's mean-reduced MSE over $k$ outputs is $c=2/k$.",
    )
    _check_minimum(derivation, loss, z, y)
    derivation.identity(
        "hessian",
        output_hessian_at_target(loss, z, y),
        scale * sp.eye(OUTPUTS),
        (r"M = \nabla^2_{zz}\ell", "c\\,I"),
        "differentiate twice",
    )
    _check_cross(derivation, loss, z, y)
    derivation.identity(
        "target-curvature",
        target_curvature(loss, z, y, u),
        sp.zeros(OUTPUTS, 1),
        ("G[u,u]", "0"),
        "the gradient $c(z-y)$ is linear in $y$",
    )
    derivation.identity(
        "sum-of-squares",
        (u.T * scale * sp.eye(OUTPUTS) * u)[0],
        scale * sum(ui**2 for ui in u),
        (r"u^\top M u", r"c\sum_i u_i^2 \ \ge 0"),
        "a sum of squares: $M \\succeq 0$",
    )
    return derivation


def soft_cross_entropy_derivation() -> Derivation:
    """M = diag(p) - p p^T, PSD by u^T M u = Var_p(u); G[u, u] = -D^2 softmax(z)[u, u]."""
    z, y, u = _vector("z"), _vector("y"), _vector("u")
    loss = soft_cross_entropy(z, y)
    p = softmax(z)
    derivation = Derivation(
        key="soft_cross_entropy",
        title=r"Softmax cross-entropy with soft targets",
        statement=(
            r"$\ell = -\operatorname{softmax}(y)\cdot\log\operatorname{softmax}(z)$ has "
            r"$M = \operatorname{diag}(p) - pp^\top$, $u^\top M u = \operatorname{Var}_p(u) \ge 0$, "
            r"and $G[u,u] = -D^2\operatorname{softmax}(z)[u,u]$."
        ),
        setting=SETTING,
    )
    derivation.identity(
        "gibbs",
        loss - soft_cross_entropy(y, y),
        kl_divergence(z, y, sp.Integer(1)),
        (
            r"\ell(z,y) - \ell(y,y)",
            r"\mathrm{KL}(\operatorname{softmax}(y)\,\|\,\operatorname{softmax}(z))",
        ),
        "cross-entropy minus entropy",
    )
    derivation.assume(
        "gibbs-inequality",
        r"\mathrm{KL}(q\,\|\,p) \ge 0",
        "Gibbs' inequality: so $z=y$ minimizes $\\ell(\\cdot,y)$",
    )
    derivation.identity(
        "gradient",
        gradient(loss, z),
        p - softmax(y),
        (r"\nabla_z\ell", r"\operatorname{softmax}(z) - \operatorname{softmax}(y)"),
        "$\\sum_i \\operatorname{softmax}(y)_i = 1$",
    )
    _check_minimum(derivation, loss, z, y)
    hessian = output_hessian_at_target(loss, z, y)
    derivation.identity(
        "hessian",
        hessian,
        softmax_jacobian(p),
        (r"M = \nabla^2_{zz}\ell\big|_{y=z}", r"\operatorname{diag}(p) - pp^\top"),
        "the Jacobian of softmax",
    )
    _check_cross(derivation, loss, z, y)
    mean = (p.T * u)[0]
    derivation.identity(
        "variance-identity",
        (u.T * softmax_jacobian(p) * u)[0],
        sum(p[i] * (u[i] - mean) ** 2 for i in range(OUTPUTS)),
        (r"u^\top M u", r"\sum_i p_i\,(u_i - p\cdot u)^2 = \operatorname{Var}_p(u) \ \ge 0"),
        "a sum of squares with weights $p_i > 0$: $M \\succeq 0$",
    )
    derivation.identity(
        "target-curvature",
        target_curvature(loss, z, y, u),
        -_softmax_second_derivative(p, u),
        (
            "G[u,u]",
            r"-p\odot\big((u - p\cdot u)^2 - \operatorname{Var}_p(u)\big) = "
            r"-D^2\operatorname{softmax}(z)[u,u]",
        ),
        r"$\nabla_z\ell(z_0, y) = p - \operatorname{softmax}(y)$",
    )
    return derivation


def kl_derivation() -> Derivation:
    """KL at temperature tau: M = (1/tau^2)(diag(p_tau) - p_tau p_tau^T), p_tau = softmax(z/tau)."""
    z, y, u = _vector("z"), _vector("y"), _vector("u")
    tau = sp.Symbol("tau", positive=True)
    loss = kl_divergence(z, y, tau)
    p_tau = softmax(z / tau)
    derivation = Derivation(
        key="kl",
        title=r"KL divergence at temperature $\tau$",
        statement=(
            r"$\ell = \mathrm{KL}(\operatorname{softmax}(y/\tau)\,\|\,\operatorname{softmax}(z/\tau))$ "
            r"has $M = \tau^{-2}(\operatorname{diag}(p_\tau) - p_\tau p_\tau^\top)$, "
            r"$p_\tau = \operatorname{softmax}(z/\tau)$ (no $\tau^2$ factor in the loss)."
        ),
        setting=SETTING,
    )
    derivation.assume(
        "gibbs-inequality",
        r"\mathrm{KL}(q\,\|\,p) \ge 0",
        "Gibbs' inequality: so $z=y$ minimizes $\\ell(\\cdot,y)$",
    )
    _check_minimum(derivation, loss, z, y)
    derivation.identity(
        "hessian",
        output_hessian_at_target(loss, z, y),
        softmax_jacobian(p_tau) / tau**2,
        (r"M", r"\tau^{-2}\big(\operatorname{diag}(p_\tau) - p_\tau p_\tau^\top\big)"),
        "chain rule through $z/\\tau$",
    )
    _check_cross(derivation, loss, z, y)
    mean = (p_tau.T * u)[0]
    derivation.identity(
        "variance-identity",
        (u.T * softmax_jacobian(p_tau) * u)[0] / tau**2,
        sum(p_tau[i] * (u[i] - mean) ** 2 for i in range(OUTPUTS)) / tau**2,
        (r"u^\top M u", r"\tau^{-2}\operatorname{Var}_{p_\tau}(u) \ \ge 0"),
        "a weighted sum of squares: $M \\succeq 0$",
    )
    derivation.identity(
        "target-curvature",
        target_curvature(loss, z, y, u),
        -_softmax_second_derivative(p_tau, u) / tau**3,
        ("G[u,u]", r"-\tau^{-3}D^2\operatorname{softmax}(z/\tau)[u,u]"),
        r"$\nabla_z\ell(z_0, y) = \tau^{-1}(p_\tau - \operatorname{softmax}(y/\tau))$",
    )
    return derivation


def subset_derivation() -> Derivation:
    """A loss on a subset S of outputs has M = P_S^T M_S P_S; one softmax logit gives M = 0."""
    z, y = _vector("z"), _vector("y")
    subset = [0, 1]
    selector = sp.Matrix(len(subset), OUTPUTS, lambda r, c: 1 if subset[r] == c else 0)
    restricted_z, restricted_y = selector * z, selector * y
    loss = soft_cross_entropy(restricted_z, restricted_y)
    derivation = Derivation(
        key="subset",
        title=r"A subset of outputs (auxiliary logits)",
        statement=(
            r"The loss on outputs $S$ has $M = P_S^\top M_S P_S$ (zero outside $S$). With one "
            r"softmax logit, $M = 0$: the student's update is exactly zero."
        ),
        setting=SETTING + r" $S=\{1,2\}$ and $S=\{3\}$ under softmax cross-entropy.",
    )
    derivation.identity(
        "projected-hessian",
        output_hessian_at_target(loss, z, y),
        selector.T * softmax_jacobian(softmax(restricted_z)) * selector,
        (r"\nabla^2_{zz}\ell_S", r"P_S^\top\big(\operatorname{diag}(p_S) - p_S p_S^\top\big)P_S"),
        "the loss does not depend on $z_3$",
    )
    single = sp.Matrix([[0, 0, 1]])
    one_logit_loss = soft_cross_entropy(single * z, single * y)
    derivation.identity(
        "one-logit-constant",
        one_logit_loss,
        sp.Integer(0),
        (r"\ell_{\{3\}}(z,y)", r"-1\cdot\log 1 = 0"),
        "the softmax of one logit is $1$",
    )
    derivation.identity(
        "one-logit-hessian",
        output_hessian_at_target(one_logit_loss, z, y),
        sp.zeros(OUTPUTS, OUTPUTS),
        (r"M_{\{3\}}", "0"),
        "so $A = B = 0$ and $\\Delta\\theta_S = 0$ for every $\\varepsilon$",
    )
    return derivation
