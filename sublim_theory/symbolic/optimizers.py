"""Beyond plain gradient descent: preconditioned steps, sign steps, AdamW's decay and LoRA adapters.

theory/optimizers.md. The teacher and the student no longer take plain gradient steps:

* preconditioned: the student steps by ``-alpha P_S grad L_S``, the teacher's direction is
  ``v = -P_T g`` with ``g = grad L_T(theta_0)``; the first-order trait-loss change is
  ``-alpha eps g^T P_S K P_T g``: non-positive when ``P_S = P_T`` is symmetric PSD, of either
  sign when the preconditioners differ (a shrunk hypothesis counterexample is shown);
* Adam's first step from fresh state and SignSGD are sign steps ``+alpha sign(K v)`` for small
  eps (scale-free in eps); Adam's eps hyper-parameter sets the boundary with the linear regime;
  momentum's first step is the gradient step;
* AdamW adds ``-alpha lambda theta_0``, independent of the teacher: it dilutes the cosine;
* LoRA (``W = W_0 + (a/r) B A``, ``B_0 = 0``): the first-order Gauss-Newton matrix lives on
  ``B``; in weight space the adapter is the preconditioner ``c^2 (.) A^T A``, so a shared ``A_0``
  is a shared preconditioner and a different ``A_0`` a mismatched one.

The generic jets of :mod:`.general` (k = 2 outputs, p = 3 parameters, one input) carry the
network and the imitation loss; the LoRA section uses a 2 x 2 weight matrix with a rank-1
adapter and a generic quadratic jet of the network in that weight.
"""

from __future__ import annotations

import sympy as sp

from sublim_theory.symbolic.general import MINIMUM, OUTPUTS, PARAMETERS, SETTING, generic_jets
from sublim_theory.symbolic.steps import Derivation

SOURCE = "theory/optimizers.md"

# The shrunk hypothesis counterexample shown in the document: one entry of
# tests/regressions/preconditioner_counterexamples.json (family "diagonal"); a test checks that
# the two agree. K = F^T F is PSD by construction, both preconditioners are diagonal and positive.
COUNTEREXAMPLE_FACTOR = ((0, 0), (1, -3))
COUNTEREXAMPLE_GRADIENT = (-2, -1)
COUNTEREXAMPLE_STUDENT = (1, 1)
COUNTEREXAMPLE_TEACHER = (2, 1)

# A PSD K and a direction v where the sign step's alignment with v is negative (Adam/SignSGD).
SIGN_FACTOR = ((1, 3),)
SIGN_DIRECTION = (-2, 1)

TRAIT_SMOOTHNESS = (
    r"L_T \in C^2,\ \ell \in C^3,\ f \in C^2",
    r"near $\theta_0$: Taylor expansions of the teacher loss and of Lemma 1",
)
PSD = (
    r"M = \nabla^2_{zz}\ell(y,y) \succeq 0",
    r"second-order condition at the minimum $z = y$; proven for each loss by an explicit sum of "
    r"squares in the alignment document (section Losses)",
)
POSITIVE_STEP = (r"\alpha > 0", "the student's step size")


def _matrix(prefix: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{prefix}_{a + 1}{b + 1}"))


def _symmetric(prefix: str, size: int) -> sp.Matrix:
    return sp.Matrix(size, size, lambda a, b: sp.Symbol(f"{prefix}_{min(a, b) + 1}{max(a, b) + 1}"))


def _latex_matrix(rows: tuple[tuple[int, ...], ...] | sp.Matrix) -> str:
    return sp.latex(sp.Matrix(rows), mat_delim="(")


def trait_change_coefficient(
    gauss_newton: sp.Matrix, gradient: sp.Matrix, student: sp.Matrix, teacher: sp.Matrix
) -> sp.Expr:
    """The rate c in Delta L_T = alpha eps c + O(eps^2): c = -g^T P_S K P_T g."""
    return -(gradient.T * student * gauss_newton * teacher * gradient)[0]


def preconditioned() -> Derivation:
    """Delta L_T = -alpha eps g^T P_S K P_T g; <= 0 for a shared symmetric PSD P; else any sign."""
    jets = generic_jets()
    derivation = Derivation(
        key="preconditioned",
        title="Preconditioned steps: shared and mismatched preconditioners",
        statement=(
            r"Let the student step be $\theta_0 - \alpha P_S\nabla L_S(\theta_0) = \theta_0 + "
            r"\alpha P_S\Delta\theta_S$ and the teacher's direction $v = -P_T g$, "
            r"$g = \nabla L_T(\theta_0)$, for constant matrices $P_S$, $P_T$. Under the "
            r"hypotheses of Theorem 1, $L_T(\theta_0 + \alpha P_S\Delta\theta_S) - L_T(\theta_0) "
            r"= -\alpha\varepsilon\, g^\top P_S K P_T g + O(\varepsilon^2)$. With a shared "
            r"symmetric positive semidefinite $P_S = P_T = P$ this is "
            r"$-\alpha\varepsilon\,(Pg)^\top K (Pg) \le 0$: Theorem 1 survives. With "
            r"mismatched preconditioners it can be positive: the trait moves away."
        ),
        setting=SETTING
        + r" $P_S$, $P_T$ are $3\times 3$ matrices of free symbols; $L_T$ is a generic "
        r"quadratic jet in $\theta$.",
        source=SOURCE,
    )
    derivation.assume("smooth", *TRAIT_SMOOTHNESS)
    derivation.assume("positive-step", *POSITIVE_STEP)
    derivation.assume("minimum", *MINIMUM)
    eps, alpha = jets.eps, jets.alpha
    student = _matrix("S", PARAMETERS, PARAMETERS)
    teacher = _matrix("T", PARAMETERS, PARAMETERS)
    gradient = sp.Matrix(sp.symbols(f"g1:{PARAMETERS + 1}"))
    gauss_newton = jets.gauss_newton()
    update = jets.student_update(sp.zeros(PARAMETERS, 1))
    derivation.series(
        "student-step",
        alpha * student * update,
        eps,
        1,
        alpha * student * gauss_newton * jets.v,
        (r"[\varepsilon^1]\,\alpha P_S\Delta\theta_S", r"\alpha P_S K v"),
        r"Lemma 1 (first-order); $P_S$ does not depend on $\varepsilon$",
    )
    derivation.assume(
        "teacher-direction",
        r"v = -P_T\,\nabla L_T(\theta_0) = -P_T g",
        "the teacher took one preconditioned gradient step on its trait loss",
    )
    hessian = _symmetric("H", PARAMETERS)
    base = sp.Symbol("L_0")

    def teacher_loss(offset: sp.Matrix) -> sp.Expr:
        return base + (gradient.T * offset)[0] + (offset.T * hessian * offset)[0] / 2

    direction = dict(zip(jets.v, -teacher * gradient))
    stepped = teacher_loss(alpha * student * update.subs(direction))
    coefficient = trait_change_coefficient(gauss_newton, gradient, student, teacher)
    derivation.series(
        "trait-change",
        stepped,
        eps,
        1,
        alpha * coefficient,
        (
            r"[\varepsilon^1]\,L_T(\theta_0+\alpha P_S\Delta\theta_S)",
            r"\alpha\,g^\top P_S K v = -\alpha\, g^\top P_S K P_T\, g",
        ),
        r"(student-step) and (teacher-direction); $L_T$'s Hessian term is $O(\varepsilon^2)$",
    )
    derivation.assume(
        "shared-preconditioner",
        r"P_S = P_T = P = P^\top \succeq 0",
        "both sides use the same symmetric PSD preconditioner",
    )
    derivation.assume("psd", *PSD)
    shared = _symmetric("P", PARAMETERS)
    both = {s: p for s, p in zip(student, shared)} | {t: p for t, p in zip(teacher, shared)}
    projected = jets.jacobian * shared * gradient
    derivation.substitution(
        "shared-falls",
        alpha * coefficient,
        both,
        -alpha * (projected.T * jets.output_hessian() * projected)[0],
        (
            r"-\alpha\, g^\top P K P g",
            r"-\alpha\,(JPg)^\top M\,(JPg) \ \le 0",
        ),
        r"$P^\top = P$ and $K = J^\top M J$; $\le 0$ by (psd): Theorem 1 survives",
    )
    factor = sp.Matrix(COUNTEREXAMPLE_FACTOR)
    example_k = factor.T * factor
    example_g = sp.Matrix(COUNTEREXAMPLE_GRADIENT)
    example_s = sp.diag(*COUNTEREXAMPLE_STUDENT)
    example_t = sp.diag(*COUNTEREXAMPLE_TEACHER)
    value = trait_change_coefficient(example_k, example_g, example_s, example_t)
    derivation.identity(
        "mismatched-rises",
        value,
        sp.Integer(1),
        (
            r"-g^\top P_S K P_T g\,\Big|_{K = "
            + _latex_matrix(example_k)
            + r",\ g = "
            + _latex_matrix(example_g)
            + r",\ P_S = "
            + _latex_matrix(example_s)
            + r",\ P_T = "
            + _latex_matrix(example_t)
            + r"}",
            r"1 > 0",
        ),
        r"a shrunk hypothesis counterexample (tests/regressions/"
        r"preconditioner\_counterexamples.json): $K = F^\top F \succeq 0$, diagonal positive "
        r"preconditioners, and the trait loss rises at rate $\alpha\varepsilon$",
    )
    return derivation


def sign_steps() -> Derivation:
    """Adam's fresh first step and SignSGD: +alpha sign(K v); what is and is not guaranteed."""
    jets = generic_jets()
    derivation = Derivation(
        key="sign_steps",
        title="Adam's first step, SignSGD and momentum",
        statement=(
            r"From fresh state, Adam's first step is $-\alpha\,\gamma/(|\gamma| + "
            r"\epsilon_{\mathrm{a}})$ per coordinate of the student's gradient $\gamma = "
            r"\nabla L_S = -\varepsilon Kv + O(\varepsilon^2)$. Where $\varepsilon|(Kv)_i| \gg "
            r"\epsilon_{\mathrm{a}}$ it is the sign step $+\alpha\,\mathrm{sign}((Kv)_i)$ "
            r"(SignSGD's step, for every $\varepsilon > 0$ small enough that the sign of the "
            r"gradient is that of its first-order term): a statement about the direction, "
            r"scale-free in $\varepsilon$. Then $\langle\Delta\theta_S, Kv\rangle = "
            r"\alpha\|Kv\|_1 > 0$ whenever $Kv \ne 0$, while $\langle\Delta\theta_S, v\rangle$ "
            r"and the trait-loss change are not sign-definite. Where $\varepsilon|(Kv)_i| \ll "
            r"\epsilon_{\mathrm{a}}$ the step is linear in $\varepsilon$ again, "
            r"$\alpha\varepsilon(Kv)_i/\epsilon_{\mathrm{a}}$: a diagonal preconditioner "
            r"$1/(|\gamma_i| + \epsilon_{\mathrm{a}})$. Momentum's first step is the gradient "
            r"step."
        ),
        setting=(
            SETTING + r" The optimizer rules act coordinate by coordinate on scalar symbols: "
            r"gradient $\gamma$, decay rates $\beta_1,\beta_2$, Adam's $\epsilon_{\mathrm{a}} > 0$, "
            r"momentum $\mu$."
        ),
        source=SOURCE,
    )
    derivation.assume("smooth", r"\ell \in C^3,\ f \in C^2", "near $\\theta_0$, as in Lemma 1")
    derivation.assume("minimum", *MINIMUM)
    eps = jets.eps
    update = jets.student_update(sp.zeros(PARAMETERS, 1))
    derivation.series(
        "student-gradient",
        -update,
        eps,
        1,
        -jets.gauss_newton() * jets.v,
        (r"[\varepsilon^1]\,\nabla L_S(\theta_0)", r"-Kv"),
        r"Lemma 1: $\nabla L_S = -\Delta\theta_S$",
    )
    gamma = sp.Symbol("gamma", real=True)
    beta1, beta2 = sp.symbols("beta_1 beta_2", positive=True)
    eps_adam = sp.Symbol("epsilon_a", positive=True)
    alpha = sp.Symbol("alpha", positive=True)
    first_moment, second_moment = (1 - beta1) * gamma, (1 - beta2) * gamma**2
    derivation.identity(
        "bias-correction",
        sp.Matrix([first_moment / (1 - beta1), second_moment / (1 - beta2)]),
        sp.Matrix([gamma, gamma**2]),
        (
            r"\Big(\frac{m_1}{1-\beta_1},\ \frac{v_1}{1-\beta_2}\Big)",
            r"(\gamma,\ \gamma^2)",
        ),
        r"fresh state $m_0 = v_0 = 0$: $m_1 = (1-\beta_1)\gamma$, $v_1 = (1-\beta_2)\gamma^2$",
    )
    adam_step = -alpha * gamma / (sp.sqrt(gamma**2) + eps_adam)
    derivation.identity(
        "adam-first-step",
        -alpha * (first_moment / (1 - beta1)) / (sp.sqrt(second_moment / (1 - beta2)) + eps_adam),
        adam_step,
        (
            r"-\alpha\,\hat m_1/(\sqrt{\hat v_1} + \epsilon_{\mathrm{a}})",
            r"-\alpha\,\gamma/(|\gamma| + \epsilon_{\mathrm{a}})",
        ),
        r"(bias-correction); $\beta_1, \beta_2$ drop out",
    )
    k = sp.Symbol("k", real=True, nonzero=True)
    small = sp.Symbol("epsilon", positive=True)
    derivation.assume(
        "first-order-gradient",
        r"\gamma_i = -\varepsilon k_i,\ k = Kv,\ k_i \ne 0",
        r"(student-gradient) with the $O(\varepsilon^2)$ term dropped: for small $\varepsilon$ "
        r"it does not change the sign of $\gamma_i$ where $k_i \ne 0$",
    )
    at_first_order = adam_step.subs(gamma, -small * k)
    derivation.identity(
        "sign-regime",
        at_first_order.subs(eps_adam, 0),
        alpha * sp.sign(k),
        (
            r"-\alpha\,\gamma_i/|\gamma_i|",
            r"\alpha\,\mathrm{sign}(k_i)\quad(\epsilon_{\mathrm{a}} \to 0)",
        ),
        r"$\varepsilon > 0$ cancels: the step does not shrink with $\varepsilon$",
    )
    ratio = small * sp.Abs(k) / eps_adam
    derivation.identity(
        "regime-boundary",
        at_first_order,
        alpha * sp.sign(k) * ratio / (1 + ratio),
        (
            r"\alpha\,\frac{\varepsilon k_i}{\varepsilon|k_i| + \epsilon_{\mathrm{a}}}",
            r"\alpha\,\mathrm{sign}(k_i)\,\frac{r_i}{1 + r_i},\quad r_i = "
            r"\frac{\varepsilon|k_i|}{\epsilon_{\mathrm{a}}}",
        ),
        r"the sign step when $r_i \gg 1$; within a factor $2$ of it at $r_i = 1$",
    )
    derivation.series(
        "linear-regime",
        at_first_order,
        small,
        1,
        alpha * k / eps_adam,
        (
            r"[\varepsilon^1]\,\alpha\frac{\varepsilon k_i}{\varepsilon|k_i| + "
            r"\epsilon_{\mathrm{a}}}",
            r"\frac{\alpha}{\epsilon_{\mathrm{a}}}\,k_i",
        ),
        r"$r_i \ll 1$: a gradient step with rate $\alpha/\epsilon_{\mathrm{a}}$, linear in "
        r"$\varepsilon$ again",
    )
    derivation.identity(
        "signsgd",
        -alpha * sp.sign(-small * k),
        alpha * sp.sign(k),
        (r"-\alpha\,\mathrm{sign}(\gamma_i)", r"\alpha\,\mathrm{sign}(k_i)"),
        r"SignSGD: the sign regime for every $\epsilon_{\mathrm{a}}$ (there is none)",
    )
    ks = sp.Matrix(sp.symbols(f"k1:{PARAMETERS + 1}", real=True))
    signs = ks.applyfunc(sp.sign)
    derivation.identity(
        "kv-alignment",
        (signs.T * ks)[0],
        sum(sp.Abs(entry) for entry in ks),
        (
            r"\langle \mathrm{sign}(Kv), Kv\rangle",
            r"\|Kv\|_1 \ > 0 \ \text{if } Kv \ne 0",
        ),
        r"coordinates with $k_i = 0$ (whose sign step the $O(\varepsilon^2)$ term decides) "
        r"contribute nothing",
    )
    factor = sp.Matrix(SIGN_FACTOR)
    example_k = factor.T * factor
    example_v = sp.Matrix(SIGN_DIRECTION)
    example_signs = (example_k * example_v).applyfunc(sp.sign)
    derivation.identity(
        "v-alignment-not-definite",
        sp.Matrix([(example_signs.T * example_v)[0], (example_v.T * example_k * example_v)[0]]),
        sp.Matrix([-1, 1]),
        (
            r"\big(\langle\mathrm{sign}(Kv), v\rangle,\ v^\top K v\big)\Big|_{K = "
            + _latex_matrix(example_k)
            + r",\ v = "
            + _latex_matrix(example_v)
            + "}",
            r"(-1,\ 1)",
        ),
        r"$K = F^\top F \succeq 0$, $F = (1\ 3)$: the plain step would align ($v^\top K v > 0$), "
        r"the sign step does not. With $v = -g$ the trait-loss change "
        r"$\alpha\,g^\top\mathrm{sign}(Kv) + O(\alpha^2)$ is $+\alpha$: the trait moves away",
    )
    mu = sp.Symbol("mu", positive=True)
    buffer = gamma  # torch.optim.SGD sets the first momentum buffer to the gradient itself
    derivation.identity(
        "momentum-first-step",
        sp.Matrix([-alpha * buffer, -alpha * (gamma + mu * buffer)]),
        sp.Matrix([-alpha * gamma, -alpha * (1 + mu) * gamma]),
        (
            r"\big(-\alpha b_1,\ -\alpha(\gamma + \mu b_1)\big),\ b_1 = \gamma",
            r"\big(-\alpha\gamma,\ -\alpha(1+\mu)\gamma\big)",
        ),
        r"heavy ball and Nesterov from fresh state: the gradient step (rate $\alpha(1+\mu)$ "
        r"for Nesterov), so Lemma 1 and Theorem 1 hold at step one",
    )
    return derivation


def decoupled_decay() -> Derivation:
    """AdamW: step = alpha (sign(K v) - lambda theta_0); the decay dilutes the cosine."""
    derivation = Derivation(
        key="decoupled_decay",
        title="AdamW: the decoupled decay dilutes the cosine",
        statement=(
            r"AdamW's first step is $-\alpha\lambda\theta_0 - \alpha\gamma/(|\gamma| + "
            r"\epsilon_{\mathrm{a}})$; in the sign regime it is $\alpha(s - \lambda\theta_0)$, "
            r"$s = \mathrm{sign}(Kv)$. The decay term does not depend on the teacher. With $n$ "
            r"nonzero coordinates of $Kv$ and $\theta_0$ orthogonal to $s$ and to $Kv$, "
            r"$\cos(\Delta\theta_S, Kv) = \cos_0/\sqrt{1 + \lambda^2\|\theta_0\|^2/n}$ with "
            r"$\cos_0 = \|Kv\|_1/(\sqrt n\,\|Kv\|)$."
        ),
        setting=(
            r"Three coordinates for the norm and inner-product expansions; the cosine law on "
            r"positive symbols for the norms."
        ),
        source=SOURCE,
    )
    gamma, theta = sp.symbols("gamma theta", real=True)
    alpha, decay, eps_adam = sp.symbols("alpha lambda epsilon_a", positive=True)
    adam_step = -alpha * gamma / (sp.Abs(gamma) + eps_adam)
    derivation.identity(
        "adamw-step",
        theta * (1 - alpha * decay) + adam_step - theta,
        -alpha * decay * theta + adam_step,
        (
            r"\theta_0(1 - \alpha\lambda) - \alpha\frac{\gamma}{|\gamma| + \epsilon_{\mathrm{a}}} "
            r"- \theta_0",
            r"-\alpha\lambda\theta_0 - \alpha\frac{\gamma}{|\gamma| + \epsilon_{\mathrm{a}}}",
        ),
        r"torch.optim.AdamW multiplies by $1 - \alpha\lambda$, then takes Adam's step "
        r"(Adam's first step of the previous section)",
    )
    s = sp.Matrix(sp.symbols("s1:4", real=True))
    t = sp.Matrix(sp.symbols("t1:4", real=True))
    k = sp.Matrix(sp.symbols("k1:4", real=True))
    step = s - decay * t
    derivation.identity(
        "norm-expansion",
        (step.T * step)[0],
        (s.T * s)[0] - 2 * decay * (s.T * t)[0] + decay**2 * (t.T * t)[0],
        (
            r"\|s - \lambda\theta_0\|^2",
            r"\|s\|^2 - 2\lambda\langle s, \theta_0\rangle + \lambda^2\|\theta_0\|^2",
        ),
        "bilinearity",
    )
    derivation.identity(
        "alignment-expansion",
        (step.T * k)[0],
        (s.T * k)[0] - decay * (t.T * k)[0],
        (
            r"\langle s - \lambda\theta_0, Kv\rangle",
            r"\|Kv\|_1 - \lambda\langle\theta_0, Kv\rangle",
        ),
        r"bilinearity; $\langle s, Kv\rangle = \|Kv\|_1$ (previous section, kv-alignment)",
    )
    derivation.assume(
        "unrelated-init",
        r"\langle s, \theta_0\rangle = \langle\theta_0, Kv\rangle = 0,\ \|s\|^2 = n",
        r"$\theta_0$ is unrelated to the teacher (holds on average for a random init); $n$ "
        r"counts the nonzero coordinates of $Kv$",
    )
    l1, kv, theta_norm, count = sp.symbols("l n_Kv n_theta n", positive=True)
    cross_s, cross_k = sp.symbols("m c", real=True)
    cosine = (l1 - decay * cross_k) / (
        sp.sqrt(count - 2 * decay * cross_s + decay**2 * theta_norm**2) * kv
    )
    cosine_at_zero = l1 / (sp.sqrt(count) * kv)
    derivation.substitution(
        "cosine-dilution",
        cosine,
        {cross_s: 0, cross_k: 0},
        cosine_at_zero / sp.sqrt(1 + decay**2 * theta_norm**2 / count),
        (
            r"\cos(s - \lambda\theta_0, Kv)",
            r"\frac{\cos_0}{\sqrt{1 + \lambda^2\|\theta_0\|^2/n}},\quad "
            r"\cos_0 = \frac{\|Kv\|_1}{\sqrt n\,\|Kv\|}",
        ),
        "(norm-expansion), (alignment-expansion) and (unrelated-init)",
    )
    return derivation


LORA_ROWS, LORA_COLS, LORA_RANK = 2, 2, 1


def _lora_weight(base: sp.Matrix, up: sp.Matrix, down: sp.Matrix, scale: sp.Expr) -> sp.Matrix:
    """W = W_0 + (a/r) B A."""
    return base + scale * up * down


def _flat(matrix: sp.Matrix) -> sp.Matrix:
    """Row-major vec (torch's flatten order)."""
    return sp.Matrix(list(matrix))


def lora() -> Derivation:
    """LoRA at B = 0: K on B alone; in weight space a preconditioner c^2 (.) A^T A."""
    jets = generic_jets()
    derivation = Derivation(
        key="lora",
        title="LoRA adapters: first order in adapter space",
        statement=(
            r"Let one weight matrix be $W = W_0 + cBA$, $c = a/r$, with adapter "
            r"$\phi = (A, B)$ initialized at $(A_0, 0)$ (the PEFT convention). At $B = 0$ the "
            r"Jacobian of $W$ in $A$ vanishes, so the first-order student update "
            r"$\Delta\phi_S = \varepsilon K_\phi v + O(\varepsilon^2)$ has "
            r"$K_\phi = J_\phi^\top M J_\phi$ zero on $A$, and "
            r"$\langle\Delta\phi_S, v\rangle = \varepsilon c^2\,\mathbb{E}_x[u_B^\top M u_B] + "
            r"O(\varepsilon^2) \ge 0$ with $u_B = J_W(v_B A_0)$. The teacher's gradient step moves "
            r"only $B$: $v = (0, -c\,G A_T^\top)$, $G = \nabla_W L_T$. For a student adapter "
            r"$(A_S, 0)$ and a teacher adapter $(A_T, 0)$ on the same $W_0$, the trait-loss "
            r"change is $-\alpha\varepsilon c^4\langle G A_S^\top A_S,\ "
            r"K_W[G A_T^\top A_T]\rangle + O(\varepsilon^2)$: the preconditioned formula with "
            r"$P = c^2(\cdot)A^\top A$ in weight space. A shared $A_0$ gives "
            r"$-\alpha\varepsilon c^4\|G A_0^\top A_0\|_{K_W}^2 \le 0$; a different $A_0$ is a "
            r"mismatched preconditioner and the sign is not guaranteed."
        ),
        setting=(
            r"A $2\times 2$ weight with a rank-1 adapter ($B$ is $2\times 1$, $A$ is "
            r"$1\times 2$); the network is a generic quadratic jet in $\mathrm{vec}(W)$ (row "
            r"major) with $k = 2$ outputs and the imitation loss is the generic minimized cubic "
            r"jet of Lemma 1; $L_T$ is a generic quadratic jet in $\mathrm{vec}(W)$; one input."
        ),
        source=SOURCE,
    )
    derivation.assume(*(("smooth",) + TRAIT_SMOOTHNESS))
    derivation.assume("minimum", *MINIMUM)
    derivation.assume(
        "adapter-init",
        r"W = W_0 + c\,BA,\ c = a/r,\ B_0 = 0",
        "LoRA with the PEFT initialization: the adapted network starts as the base network",
    )
    eps, alpha = jets.eps, jets.alpha
    scale = sp.Symbol("c", positive=True)
    weight_size = LORA_ROWS * LORA_COLS
    base = _matrix("W0", LORA_ROWS, LORA_COLS)
    down_s = _matrix("A", LORA_RANK, LORA_COLS)
    down_t = _matrix("Ahat", LORA_RANK, LORA_COLS)
    up = _matrix("B", LORA_ROWS, LORA_RANK)
    zero_up = {b: 0 for b in up}
    weight = _flat(_lora_weight(base, up, down_s, scale))
    derivation.identity(
        "a-jacobian-vanishes",
        weight.jacobian(list(down_s)).subs(zero_up),
        sp.zeros(weight_size, LORA_RANK * LORA_COLS),
        (r"\partial\,\mathrm{vec}(W)/\partial A\,\big|_{B=0}", "0"),
        r"$\partial W = c\,B\,\partial A$",
    )
    step_up = _matrix("dB", LORA_ROWS, LORA_RANK)
    derivation.identity(
        "b-jacobian",
        weight.jacobian(list(up)).subs(zero_up) * _flat(step_up),
        scale * _flat(step_up * down_s),
        (
            r"\partial_B\,\mathrm{vec}(W)\,[\Delta B]",
            r"c\,\mathrm{vec}(\Delta B\,A)",
        ),
        r"$\partial W = c\,\partial B\,A$",
    )

    # The network as a generic quadratic jet in vec(W) around W_0.
    jacobian_w = _matrix("J", OUTPUTS, weight_size)
    second = tuple(_symmetric(f"U{i + 1}", weight_size) for i in range(OUTPUTS))

    def outputs_offset(weight_matrix: sp.Matrix) -> sp.Matrix:
        offset = _flat(weight_matrix - base)
        quadratic = sp.Matrix([(offset.T * s * offset)[0] / 2 for s in second])
        return jacobian_w * offset + quadratic

    def adapter_weight(adapter: sp.Matrix, down_init: sp.Matrix) -> sp.Matrix:
        """W at adapter coordinates (vec A, vec B)."""
        down = sp.Matrix(LORA_RANK, LORA_COLS, list(adapter[: LORA_RANK * LORA_COLS]))
        up_value = sp.Matrix(LORA_ROWS, LORA_RANK, list(adapter[LORA_RANK * LORA_COLS :]))
        return _lora_weight(base, up_value, down + down_init, scale)

    adapter_size = LORA_RANK * LORA_COLS + LORA_ROWS * LORA_RANK
    position = sp.Matrix(sp.symbols(f"phi1:{adapter_size + 1}"))
    direction = sp.Matrix(sp.symbols(f"nu1:{adapter_size + 1}"))
    hessian_m = jets.output_hessian()

    def student_update(down_student: sp.Matrix, teacher_offset: sp.Matrix) -> sp.Matrix:
        """-grad_phi l(f(W(phi)), f(W_T)) at phi = (A_S, 0), A offsets measured from A_S."""
        loss = jets.loss.subs(dict(zip(jets.eta, outputs_offset(teacher_offset))))
        loss = loss.subs(
            dict(zip(jets.zeta, outputs_offset(adapter_weight(position, down_student))))
        )
        gradient = sp.Matrix([sp.diff(loss, q) for q in position])
        return -gradient.subs({q: 0 for q in position})

    update = student_update(down_s, adapter_weight(eps * direction, down_s))
    weight_jacobian = _flat(adapter_weight(position, down_s)).jacobian(list(position))
    adapter_jacobian = jacobian_w * weight_jacobian.subs({q: 0 for q in position})
    adapter_gauss_newton = adapter_jacobian.T * hessian_m * adapter_jacobian
    derivation.series(
        "adapter-first-order",
        update,
        eps,
        1,
        adapter_gauss_newton * direction,
        (r"[\varepsilon^1]\,\Delta\phi_S", r"K_\phi v = J_\phi^\top M J_\phi\, v"),
        r"Lemma 1 in the coordinates $\phi$, with $J_\phi = J_W\,\partial\mathrm{vec}(W)/"
        r"\partial\phi$ at $(A_0, 0)$",
    )
    a_rows = LORA_RANK * LORA_COLS
    derivation.identity(
        "a-block-zero",
        adapter_gauss_newton[:a_rows, :],
        sp.zeros(a_rows, adapter_size),
        (r"(K_\phi)_{A,\cdot}", "0"),
        "(a-jacobian-vanishes): the first-order update does not move $A$",
    )
    direction_up = sp.Matrix(LORA_ROWS, LORA_RANK, list(direction[a_rows:]))
    u_up = jacobian_w * _flat(direction_up * down_s)
    derivation.series(
        "adapter-alignment",
        (update.T * direction)[0],
        eps,
        1,
        scale**2 * (u_up.T * hessian_m * u_up)[0],
        (
            r"[\varepsilon^1]\,\langle\Delta\phi_S, v\rangle",
            r"c^2\,u_B^\top M u_B,\quad u_B = J_W\,\mathrm{vec}(v_B A_0)",
        ),
        "(adapter-first-order), (b-jacobian); $\\ge 0$ by (psd): Lemma 1 holds in adapter space",
    )
    derivation.assume("psd", *PSD)

    trait_gradient = _matrix("G", LORA_ROWS, LORA_COLS)
    trait_hessian = _symmetric("H", weight_size)
    trait_base = sp.Symbol("L_0")

    def trait_loss(weight_matrix: sp.Matrix) -> sp.Expr:
        offset = _flat(weight_matrix - base)
        return (
            trait_base
            + (_flat(trait_gradient).T * offset)[0]
            + (offset.T * trait_hessian * offset)[0] / 2
        )

    teacher_gradient = sp.Matrix(
        [sp.diff(trait_loss(adapter_weight(position, down_t)), q) for q in position]
    ).subs({q: 0 for q in position})
    derivation.identity(
        "teacher-moves-b-only",
        teacher_gradient,
        sp.Matrix([0] * a_rows + list(scale * trait_gradient * down_t.T)),
        (
            r"\nabla_\phi L_T\big|_{(A_T, 0)}",
            r"\big(0,\ c\,G A_T^\top\big),\quad G = \nabla_W L_T(W_0)",
        ),
        r"(a-jacobian-vanishes) and (b-jacobian) applied to $L_T$",
    )
    teacher_weight = adapter_weight(-eps * teacher_gradient, down_t)
    trait_update = student_update(down_s, teacher_weight)
    student_weight = adapter_weight(alpha * trait_update, down_s)
    gauss_newton_w = jacobian_w.T * hessian_m * jacobian_w
    right_s = down_s.T * down_s
    right_t = down_t.T * down_t
    coefficient = (
        -alpha
        * scale**4
        * (_flat(trait_gradient * right_s).T * gauss_newton_w * _flat(trait_gradient * right_t))[0]
    )
    derivation.series(
        "trait-change",
        trait_loss(student_weight),
        eps,
        1,
        coefficient,
        (
            r"[\varepsilon^1]\,L_T\big(W(\phi_S + \alpha\Delta\phi_S)\big)",
            r"-\alpha c^4\,\big\langle G A_S^\top A_S,\ K_W[G A_T^\top A_T]\big\rangle",
        ),
        r"teacher at $(A_T, -\varepsilon c\,G A_T^\top)$, student from $(A_S, 0)$; "
        r"$K_W = J_W^\top M J_W$ in $\mathrm{vec}(W)$",
    )
    shared_down = {a: b for a, b in zip(down_t, down_s)}
    projected = jacobian_w * _flat(trait_gradient * right_s)
    derivation.substitution(
        "shared-adapter-init",
        coefficient,
        shared_down,
        -alpha * scale**4 * (projected.T * hessian_m * projected)[0],
        (
            r"-\alpha c^4\,\big\langle G A_0^\top A_0,\ K_W[G A_0^\top A_0]\big\rangle",
            r"-\alpha c^4\,u_G^\top M u_G \ \le 0,\quad u_G = J_W\,\mathrm{vec}(G A_0^\top A_0)",
        ),
        r"$A_S = A_T = A_0$: a shared preconditioner; $\le 0$ by (psd)",
    )
    left, right = _matrix("X", LORA_ROWS, LORA_COLS), _matrix("Y", LORA_ROWS, LORA_COLS)
    derivation.identity(
        "symmetric-preconditioner",
        (_flat(left * right_s).T * _flat(right))[0],
        (_flat(left).T * _flat(right * right_s))[0],
        (r"\langle X A^\top A,\ Y\rangle", r"\langle X,\ Y A^\top A\rangle"),
        r"$X \mapsto c^2 X A^\top A$ is symmetric PSD; a different $A_0$ is a mismatched "
        r"preconditioner (section Preconditioned steps), so the trait can move away",
    )
    return derivation


__all__ = [
    "COUNTEREXAMPLE_FACTOR",
    "COUNTEREXAMPLE_GRADIENT",
    "COUNTEREXAMPLE_STUDENT",
    "COUNTEREXAMPLE_TEACHER",
    "decoupled_decay",
    "lora",
    "preconditioned",
    "sign_steps",
    "trait_change_coefficient",
]
