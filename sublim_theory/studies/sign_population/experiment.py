"""How often one sign-type student step RAISES the trait loss, over a drawn population of problems.

Issue 21, item 2; theory/optimizers.md. At the shared init the student's gradient is
``g = -eps K v + O(eps^2)`` (Lemma 1), so one step of

* ``sgd`` (lr alpha) moves by ``s = alpha eps K v``, and the trait loss changes by
  ``Delta L_T = <grad L_T(theta_0), s> = -alpha eps v^T K v <= 0`` to first order when the teacher
  is ``v = -grad L_T(theta_0)``;
* ``signsgd`` moves by ``s = alpha sign(K v)`` and Adam's first step (fresh moments) by
  ``alpha eps k / (eps |k| + eps_a)``, ``k = K v``, about the same where ``eps |k_i| >> eps_a``.
  Then ``Delta L_T = -alpha <v, sign(K v)>`` to first order, which has no fixed sign: it is
  ``-alpha v^T D K v`` with ``D = diag(1 / |K v|)``, a preconditioner that does not commute with
  K. For a diagonal K it is ``-alpha sum_i d_i k_ii v_i^2 <= 0``, so a rise needs K's
  off-diagonal mass (and, in two dimensions, unequal diagonal entries: with ``K_11 = K_22`` one
  has ``|K_12| <= K_22`` and ``sign(Kv)_i = sign(v_i)`` on the larger ``|v_i|``).

The README claimed, from 40 model-seed pairs per cell, that a sign step "never rose". This study
draws a population of small float64 problems (architecture family and sizes, seeds, teacher
kind, imitation loss, input distribution and count, full or LoRA r = 1), takes ONE student step
under each rule with :func:`sublim_theory.engine.rule_report.report_rule`, and counts how often the
exact ``Delta L_T = L_T(theta_S0 + s) - L_T(theta_S0)`` is positive, with Clopper-Pearson 95%
intervals per rule and stratum. Beside it, per problem, the predictors: the explicit
Gauss-Newton K (its condition number, effective rank and off-diagonal mass), ``cos(v, K v)``,
``cos(sign(K v), v)``, ``cos(step, K v)``, sizes and rank; each is scored by its AUROC for
"rose" (DeLong interval), and a logistic fit of "rose" on the structural predictors.

Two channels: ``all`` (the student imitates every output, the trait's logits among them, as the
README's rules sweep did) and ``aux`` (the trait is cross-entropy on the first c outputs and the
student imitates only the others: the paper's auxiliary-logit setting and the README's worked
example). Strata:

* ``population``: the drawn problems (:func:`draw_problem`);
* ``audit_465_all`` / ``audit_465_aux``: 4-6-5 tanh MLPs, full, gradient teacher, softmax CE,
  uniform inputs; ``aux`` puts the trait on outputs 0-2 and the imitation on outputs 3-4;
* ``readme_lora1``: the README's worked example (20-64-13 GELU net, trait on outputs 0-9, KL on
  outputs 10-12, 10 Adam teacher steps, eps = 1, every rule at lr 1e-3) with LoRA r = 1.

The study interface (``units``, ``run_unit``, ``report``) is what ``sublim-theory sign-population``
drives; a unit is a block of problems and its rows are a pure function of the config and the unit.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacfwd

from sublim_theory.engine.alignment import TeacherTask
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora
from sublim_theory.engine.losses import ImitationLoss, make_loss
from sublim_theory.engine.rule_report import report_rule, student_gradients, teacher_direction
from sublim_theory.engine.update_rules import UpdateRule, make_rule
from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.harness.seeds import OFFSETS
from sublim_theory.models.architectures import MLP, build_model, make_inputs
from sublim_theory.testing.reference import explicit_jacobian

__all__ = [
    "in_first_order_regime",
    "rate_rows",
    "rounding_floor",
    "COLUMNS",
    "FAMILIES",
    "RULES",
    "STRUCTURAL_PREDICTORS",
    "PREDICTORS",
    "STRATA",
    "Problem",
    "SignPopulationConfig",
    "auroc",
    "build_problem",
    "clopper_pearson",
    "draw_problem",
    "explicit_gauss_newton_matrix",
    "kernel_statistics",
    "load_config",
    "logistic_fit",
    "measure_problem",
    "report",
    "run_unit",
    "units",
]

RULES = ("sgd", "adam", "signsgd")
SHOWN = ("signsgd", "adam", "sgd")  # the order of the per-factor table's columns
STRATA = ("population", "audit_465_all", "audit_465_aux", "readme_lora1")
FAMILIES = ("mlp_tanh", "mlp_gelu", "mlp_relu", "resmlp", "cnn", "transformer")
TEACHERS = ("gradient", "adam")
LOSS_NAMES = ("softmax_ce", "squared", "kl")
CHANNELS = ("all", "aux")
INPUT_COUNTS = (4, 16, 64)


@dataclass(frozen=True)
class SignPopulationConfig:
    """The study's settings (TOML, :func:`load_config`).

    Attributes:
        seed: the master seed; problem i of a stratum is drawn from ``(seed, stratum, i)``.
        population: drawn problems in the ``population`` stratum.
        audit: problems in each of the ``audit_465_all`` and ``audit_465_aux`` strata.
        readme: problems in the ``readme_lora1`` stratum (the README example, LoRA r = 1).
        unit_size: problems per unit (the resumable block).
        eps: the teacher's step theta_T = theta_0 + eps v (population and audit).
        sgd_lr, adam_lr, signsgd_lr: the student's step sizes (population and audit).
        teacher_adam_steps, teacher_adam_lr: the ``adam`` teacher (v = displacement after these).
        n_teacher_inputs: inputs of the trait task L_T (random-label cross-entropy).
        lora_fraction: the share of drawn problems that use LoRA r = 1 (in adapter space).
        aux_fraction: the share of drawn problems whose imitation loss sees only outputs the
            trait does not (the ``aux`` channel).
        max_width: the largest hidden width drawn for the MLPs (others scale from it).
        families: the architecture families drawn (:data:`FAMILIES`).

    """

    seed: int = field(default=0, metadata=runs.bound(ge=0))
    population: int = field(default=1000, metadata=runs.bound(ge=0))
    audit: int = field(default=300, metadata=runs.bound(ge=0))
    readme: int = field(default=50, metadata=runs.bound(ge=0))
    unit_size: int = field(default=50, metadata=runs.bound(ge=1))
    eps: float = field(default=1e-3, metadata=runs.bound(gt=0))
    sgd_lr: float = field(default=1.0, metadata=runs.bound(gt=0))
    adam_lr: float = field(default=1e-3, metadata=runs.bound(gt=0))
    signsgd_lr: float = field(default=1e-3, metadata=runs.bound(gt=0))
    teacher_adam_steps: int = field(default=10, metadata=runs.bound(ge=1))
    teacher_adam_lr: float = field(default=1e-3, metadata=runs.bound(gt=0))
    n_teacher_inputs: int = field(default=32, metadata=runs.bound(ge=1))
    lora_fraction: float = field(default=0.5, metadata=runs.bound(ge=0, le=1))
    aux_fraction: float = field(default=0.5, metadata=runs.bound(ge=0, le=1))
    max_width: int = field(default=16, metadata=runs.bound(ge=2))
    families: tuple[str, ...] = FAMILIES

    def settings(self) -> dict[str, Any]:
        """Every setting (a run's identity)."""
        return asdict(self)


def load_config(path: str | Path) -> SignPopulationConfig:
    """Read a TOML config (top-level keys of :class:`SignPopulationConfig`).

    Returns:
        The config.

    Raises:
        InputError: an unknown key, a bad value, or an unknown family.

    """
    raw, source = runs.load_toml(path, "sign-population config"), str(path)
    config = runs.parse_config(SignPopulationConfig, raw, source)
    unknown = [f for f in config.families if f not in FAMILIES]
    if unknown or len(set(config.families)) != len(config.families):
        raise InputError(
            f"{source}: families {list(config.families)} must be distinct names from "
            f"{list(FAMILIES)}"
        )
    return config


# --------------------------------------------------------------------------------------------
# the units: blocks of problems
# --------------------------------------------------------------------------------------------
def units(config: SignPopulationConfig) -> list[dict[str, Any]]:
    """The resumable blocks: ``{"name", "stratum", "start", "stop"}``, ``unit_size`` problems each.

    Returns:
        The units in a fixed order (:data:`STRATA`).

    """
    counts = {
        "population": config.population,
        "audit_465_all": config.audit,
        "audit_465_aux": config.audit,
        "readme_lora1": config.readme,
    }
    blocks = []
    for stratum in STRATA:
        for start in range(0, counts[stratum], config.unit_size):
            stop = min(start + config.unit_size, counts[stratum])
            blocks.append(
                {"name": f"{stratum}-{start:05d}", "stratum": stratum, "start": start, "stop": stop}
            )
    return blocks


def _generator(config: SignPopulationConfig, stratum: str, index: int) -> random.Random:
    # a string seed is hashed with SHA-512 by random.Random: stable across runs and processes
    return random.Random(f"sign-population|{config.seed}|{stratum}|{index}")


def draw_problem(config: SignPopulationConfig, stratum: str, index: int) -> dict[str, Any]:
    """The plain-data description of problem ``index`` of ``stratum`` (deterministic).

    Returns:
        A JSON-able spec: family, activation, sizes, parameterization, teacher, loss, inputs,
        seeds, eps and the learning rates.

    Raises:
        InputError: an unknown stratum.

    """
    if stratum not in STRATA:
        raise InputError(f"unknown stratum '{stratum}'; choose from {list(STRATA)}")
    draw = _generator(config, stratum, index)
    lrs = {"sgd": config.sgd_lr, "adam": config.adam_lr, "signsgd": config.signsgd_lr}
    spec: dict[str, Any] = {
        "stratum": stratum,
        "problem": index,
        "model_seed": draw.randrange(2**31),
        "data_seed": draw.randrange(2**31),
        "eps": config.eps,
        "lrs": lrs,
        "n_teacher_inputs": config.n_teacher_inputs,
        "teacher_adam_steps": config.teacher_adam_steps,
        "teacher_adam_lr": config.teacher_adam_lr,
    }
    if stratum.startswith("audit_465"):
        aux = stratum == "audit_465_aux"
        return {
            **spec,
            "family": "mlp_tanh",
            "in_features": 4,
            "hidden": [6],
            "out_features": 5,
            "channel": "aux" if aux else "all",
            # aux: the trait is 3-way cross-entropy on outputs 0-2, the student imitates 3-4
            "trait_classes": 3 if aux else 5,
            "parameterization": "full",
            "teacher": "gradient",
            "loss": "softmax_ce",
            "input_distribution": "uniform",
            "n_inputs": 64,
        }
    if stratum == "readme_lora1":
        return {
            **spec,
            "family": "readme_gelu",
            "in_features": 20,
            "hidden": [64],
            "out_features": 13,
            "channel": "aux",
            "trait_classes": 10,
            "parameterization": "lora1",
            "teacher": "adam",
            "loss": "kl",
            "input_distribution": "uniform",
            "n_inputs": 256,
            "n_teacher_inputs": 128,
            "eps": 1.0,
            "lrs": {"sgd": 1e-3, "adam": 1e-3, "signsgd": 1e-3},
            "teacher_adam_steps": 10,
            "teacher_adam_lr": 1e-3,
        }
    family = draw.choice(config.families)
    top = config.max_width
    depth = draw.choice((1, 2))
    channel = "aux" if draw.random() < config.aux_fraction else "all"
    classes = draw.randint(2, 8)
    # aux: at least 2 imitated outputs (a softmax over one output is constant: K = 0)
    out = classes + draw.randint(2, 4) if channel == "aux" else classes
    spec.update(
        family=family,
        channel=channel,
        trait_classes=classes,
        out_features=out,
        in_features=draw.randint(2, 8),
        depth=depth,
        parameterization="lora1" if draw.random() < config.lora_fraction else "full",
        teacher=draw.choice(TEACHERS),
        loss=draw.choice(LOSS_NAMES),
        input_distribution=draw.choice(("uniform", "gaussian")),
        n_inputs=draw.choice(INPUT_COUNTS),
    )
    if family.startswith("mlp"):
        spec["hidden"] = [draw.randint(2, top) for _ in range(depth)]
    elif family == "resmlp":
        spec["hidden"] = [draw.randint(2, max(2, top * 5 // 8))]
    elif family == "cnn":
        spec["hidden"] = [draw.randint(2, max(2, top // 2))]
        spec["image_size"] = draw.choice((4, 6, 8))
    else:
        spec["hidden"] = [draw.choice((2, 4, 6, 8))]
        spec["vocab_size"] = draw.randint(4, 12)
        spec["seq_len"] = draw.randint(2, 6)
        spec["depth"] = 1
    if family == "transformer":
        spec["input_distribution"] = "tokens"  # random tokens: no continuous distribution
    return spec


# --------------------------------------------------------------------------------------------
# one problem
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Problem:
    """The tensors of one problem.

    Attributes:
        model: the network (LoRA: the adapted one; theta is then the adapter vector).
        theta0: the shared init.
        task: the trait L_T.
        inputs: the distillation inputs.
        loss: the imitation loss.
        eps: the teacher's step.
        rules: the student's update rules by name.
        teacher: ``gradient`` (v = -grad L_T) or ``adam`` (v = the teacher's displacement).
        teacher_adam_steps, teacher_adam_lr: the ``adam`` teacher.
        direction: v when given (e.g. a constructed problem); None builds it from ``teacher``.

    """

    model: FunctionalModel
    theta0: Tensor
    task: TeacherTask
    inputs: Tensor
    loss: ImitationLoss
    eps: float
    rules: Mapping[str, UpdateRule]
    teacher: str = "gradient"
    teacher_adam_steps: int = 10
    teacher_adam_lr: float = 1e-3
    direction: Tensor | None = None


def _arch(family: str) -> str:
    if family.startswith("mlp") or family == "readme_gelu":
        return "mlp"
    return family


def _network(spec: Mapping[str, Any]) -> nn.Module:
    family, out = spec["family"], spec["out_features"]
    if family == "readme_gelu" or family.startswith("mlp"):
        activation = "gelu" if family == "readme_gelu" else family.removeprefix("mlp_")
        torch.manual_seed(spec["model_seed"])
        return MLP(spec["in_features"], spec["hidden"], out, activation).double().eval()
    width = spec["hidden"][0]
    return build_model(
        family,
        out,
        in_features=spec["in_features"],
        width=width,
        depth=spec["depth"],
        vocab_size=spec.get("vocab_size", 16),
        seq_len=spec.get("seq_len", 6),
        seed=spec["model_seed"],
        dtype=torch.float64,
    )


def _inputs(spec: Mapping[str, Any], n: int, seed: int, distribution: str) -> Tensor:
    return make_inputs(
        _arch(spec["family"]),
        n,
        in_features=spec["in_features"],
        image_size=spec.get("image_size", 8),
        vocab_size=spec.get("vocab_size", 16),
        seq_len=spec.get("seq_len", 6),
        distribution="uniform" if distribution == "tokens" else distribution,
        seed=seed,
        dtype=torch.float64,
    )


def _trait_cross_entropy(classes: int | None) -> Callable[[Tensor, Tensor], Tensor]:
    if classes is None:
        return F.cross_entropy

    def loss(outputs: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(outputs[:, :classes], labels)

    return loss


def build_problem(spec: Mapping[str, Any]) -> Problem:
    """The model, init, trait task, distillation inputs, loss and rules of a spec.

    Returns:
        The :class:`Problem` (float64).

    """
    network = _network(spec)
    seed = spec["data_seed"]
    n_teacher = spec["n_teacher_inputs"]
    classes, out = spec["trait_classes"], spec["out_features"]
    teacher_inputs = _inputs(spec, n_teacher, seed, "gaussian")
    labels = torch.randint(0, classes, (n_teacher,), generator=torch.Generator().manual_seed(seed))
    inputs = _inputs(
        spec, spec["n_inputs"], seed + OFFSETS["sign_population.inputs"], spec["input_distribution"]
    )
    imitated = list(range(classes, out)) if spec["channel"] == "aux" else None
    loss = make_loss(spec["loss"], outputs=imitated)
    if spec["parameterization"] == "lora1":
        network = add_lora(network, 1, seed=spec["model_seed"] + OFFSETS["sign_population.lora"])
    model = FunctionalModel(network)
    task = TeacherTask(
        _trait_cross_entropy(classes if classes < out else None), teacher_inputs, labels
    )
    rules = {name: make_rule(name, spec["lrs"][name]) for name in RULES}
    return Problem(
        model,
        model.flat_params(),
        task,
        inputs,
        loss,
        float(spec["eps"]),
        rules,
        teacher=spec["teacher"],
        teacher_adam_steps=spec["teacher_adam_steps"],
        teacher_adam_lr=spec["teacher_adam_lr"],
    )


def explicit_gauss_newton_matrix(
    model: FunctionalModel, theta: Tensor, inputs: Tensor, loss: ImitationLoss
) -> Tensor:
    """K = E_x[J^T M J] as a dense P x P matrix (theory/alignment.md, Lemma 1).

    J is materialized with ``jacfwd`` when P is below the number of outputs, else with
    ``jacrev`` (:func:`sublim_theory.testing.reference.explicit_jacobian`); M at each position comes from
    the loss's closed-form ``hessian_vector_product`` applied to the k unit vectors, so the cost
    is one Jacobian and no per-position autograd Hessians. The caller checks ``K v`` against the
    engine's matrix-free product.

    Returns:
        K, (P, P), in float64, averaged over every output position.

    """
    z0 = model(theta, inputs).detach()
    k = z0.shape[-1]
    z0 = z0.reshape(-1, k).double()
    positions = z0.shape[0]
    if theta.numel() < positions * k:
        jac = jacfwd(model.as_function(inputs))(theta).reshape(positions, k, -1).double()
    else:
        jac = explicit_jacobian(model, theta, inputs).double()
    eye = torch.eye(k, dtype=torch.float64)
    # M[n, :, j] = M_n e_j
    curvature = torch.stack(
        [loss.hessian_vector_product(z0, eye[j].expand(positions, k)) for j in range(k)], dim=-1
    )
    matrix = torch.einsum("nkp,nkl,nlq->pq", jac, curvature, jac) / positions
    return (matrix + matrix.T) / 2


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na * nb > 0 else math.nan


def kernel_statistics(matrix: Tensor, v: Tensor, k_v: Tensor) -> dict[str, float]:
    """The anisotropy of K and the sign geometry of v and K v.

    With eigenvalues ``lambda_1 >= ...`` of K, those above ``lambda_1 P u`` (u the float64 unit
    round-off times 64) count as nonzero:

    * ``k_top_eigenvalue``: ``lambda_1``; ``k_rank``: how many are nonzero;
      ``k_condition``: ``lambda_1 / lambda_min_nonzero``;
    * ``k_effective_rank``: the participation ratio ``(sum lambda)^2 / sum lambda^2``, and
      ``k_effective_rank_fraction`` that over P;
    * ``k_offdiagonal_fraction``: ``||K - diag K||_F / ||K||_F`` (0 for a diagonal K, which
      no sign step can make rise; module docstring);
    * ``cos_v_Kv``, ``cos_signKv_v`` = ``<sign(K v), v> / (||sign(K v)|| ||v||)``, and
      ``sign_disagreement``: the fraction of coordinates with ``(K v)_i != 0`` where
      ``sign((K v)_i) != sign(v_i)``.

    Args:
        matrix: K (P, P), symmetric.
        v: the teacher's direction.
        k_v: K v (the engine's jvp product; the caller checks it against ``matrix @ v``).

    Returns:
        The statistics as floats (NaN where undefined).

    """
    eigenvalues = torch.linalg.eigvalsh(matrix).clamp_min(0).flip(0)
    top = float(eigenvalues[0])
    size = matrix.shape[0]
    floor = top * size * 64 * torch.finfo(torch.float64).eps
    nonzero = eigenvalues[eigenvalues > floor]
    total, squares = float(eigenvalues.sum()), float((eigenvalues**2).sum())
    effective = total**2 / squares if squares > 0 else math.nan
    offdiagonal = matrix - torch.diag(torch.diagonal(matrix))
    frobenius = float(matrix.norm())
    signs = torch.sign(k_v)
    decided = k_v != 0
    disagree = (
        float((torch.sign(v[decided]) != signs[decided]).double().mean())
        if bool(decided.any())
        else math.nan
    )
    return {
        "k_top_eigenvalue": top,
        "k_rank": int(nonzero.numel()),
        "k_condition": top / float(nonzero[-1]) if nonzero.numel() else math.nan,
        "k_effective_rank": effective,
        "k_effective_rank_fraction": effective / size,
        "k_offdiagonal_fraction": float(offdiagonal.norm()) / frobenius if frobenius else math.nan,
        "cos_v_Kv": _cos(v, k_v),
        "cos_signKv_v": _cos(signs, v),
        "sign_disagreement": disagree,
    }


def rounding_floor(level: float) -> float:
    """The smallest trait-loss change resolved against rounding of ``L_T`` in float64.

    Returns:
        ``1024 u max(|L_T|, 1)``, u the float64 unit round-off (a sum over a few hundred terms
        loses at most a few hundred ulps).

    """
    return 1024 * torch.finfo(torch.float64).eps * max(abs(level), 1.0)


def measure_problem(problem: Problem) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One student step under each rule at the shared init, and the problem's predictors.

    Returns:
        ``(predictors, rule_rows)``: the problem-level statistics (:func:`kernel_statistics`,
        ``num_params``, ``k_v_oracle_error`` = ``||K v - K_explicit v|| / ||K v||``,
        ``cos_signKv_trait`` = cos(sign(K v), -grad L_T(theta_0)), ``cos_trait_Kv`` =
        cos(-grad L_T(theta_0), K v)), and one dict per rule with
        the exact, control and first-order trait-loss changes (``degenerate``: K v = 0 to
        rounding, so the student does not move at first order), ``rose`` (exact change > 0),
        ``rose_vs_control``, ``rose_first_order``, ``resolved`` (|exact change| above
        :func:`rounding_floor`) and the step's cosines.

    """
    model, theta0, task = problem.model, problem.theta0, problem.task
    if problem.direction is not None:
        v = problem.direction
    elif problem.teacher == "gradient":
        v = teacher_direction(model, theta0, task)
    else:
        v = teacher_direction(
            model,
            theta0,
            task,
            "adam",
            steps=problem.teacher_adam_steps,
            lr=problem.teacher_adam_lr,
        )
    gradients = student_gradients(model, v, problem.inputs, problem.loss, problem.eps)
    matrix = explicit_gauss_newton_matrix(model, theta0, problem.inputs, problem.loss)
    k_v = gradients.k_v.double()
    explicit = matrix @ v.double()
    descent = -task.gradient(model, theta0).double()
    scale = float(k_v.norm())
    predictors: dict[str, Any] = {
        "num_params": int(theta0.numel()),
        **kernel_statistics(matrix, v.double(), k_v),
        "k_v_oracle_error": float((k_v - explicit).norm()) / scale if scale else math.nan,
        "cos_signKv_trait": _cos(torch.sign(k_v), descent),
        "cos_trait_Kv": _cos(descent, k_v),
        "norm_v": float(v.norm()),
        "norm_Kv": scale,
    }
    # K v = 0 (e.g. LoRA on a head whose imitated rows the trait never touches): the student
    # does not move at first order; such problems say nothing about the sign of a step
    predictors["degenerate"] = bool(
        scale <= 1e-12 * predictors["k_top_eigenvalue"] * predictors["norm_v"]
    )
    level = float(task.loss(model, theta0))
    floor = rounding_floor(level)
    rows = []
    for name, rule in problem.rules.items():
        result = report_rule(gradients, rule, None, task)
        change = result.teacher_loss_change_exact
        versus = result.teacher_loss_change_vs_control
        first = result.teacher_loss_change_first_order
        rows.append(
            {
                "rule": name,
                "lr": float(rule.lr),
                "change_exact": change,
                "change_control": result.teacher_loss_change_control,
                "change_vs_control": versus,
                "change_first_order": first,
                "rose": bool(change > 0),
                "rose_vs_control": bool(versus > 0),
                "rose_first_order": bool(first > 0),
                "resolved": bool(abs(change) > floor),
                "cos_step_K_v": result.cos_step_K_v,
                "cos_step_teacher": result.cos_step_teacher,
                "sign_agreement": result.sign_agreement,
            }
        )
    return predictors, rows


IDENTITY = (
    "stratum",
    "problem",
    "family",
    "channel",
    "trait_classes",
    "parameterization",
    "rank",
    "teacher",
    "loss",
    "input_distribution",
    "n_inputs",
    "in_features",
    "hidden",
    "width",
    "depth",
    "out_features",
    "model_seed",
    "eps",
)
PROBLEM_COLUMNS = (
    "num_params",
    "degenerate",
    "k_top_eigenvalue",
    "k_rank",
    "k_condition",
    "k_effective_rank",
    "k_effective_rank_fraction",
    "k_offdiagonal_fraction",
    "k_v_oracle_error",
    "cos_v_Kv",
    "cos_signKv_v",
    "cos_signKv_trait",
    "cos_trait_Kv",
    "sign_disagreement",
    "norm_v",
    "norm_Kv",
)
RULE_COLUMNS = (
    "rule",
    "lr",
    "change_exact",
    "change_control",
    "change_vs_control",
    "change_first_order",
    "rose",
    "rose_vs_control",
    "rose_first_order",
    "resolved",
    "cos_step_K_v",
    "cos_step_teacher",
    "sign_agreement",
)
COLUMNS = (*IDENTITY, *PROBLEM_COLUMNS, *RULE_COLUMNS)


def run_unit(config: SignPopulationConfig, unit: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (problem, rule) row of one unit; a pure function of the config and the unit.

    Returns:
        Rows with :data:`COLUMNS`.

    """
    rows = []
    for index in range(unit["start"], unit["stop"]):
        spec = draw_problem(config, unit["stratum"], index)
        predictors, rule_rows = measure_problem(build_problem(spec))
        identity = {
            "stratum": spec["stratum"],
            "problem": index,
            "family": spec["family"],
            "channel": spec["channel"],
            "trait_classes": spec["trait_classes"],
            "parameterization": spec["parameterization"],
            "rank": 1 if spec["parameterization"] == "lora1" else 0,
            "teacher": spec["teacher"],
            "loss": spec["loss"],
            "input_distribution": spec["input_distribution"],
            "n_inputs": spec["n_inputs"],
            "in_features": spec["in_features"],
            "hidden": "x".join(str(h) for h in spec["hidden"]),
            "width": max(spec["hidden"]),
            "depth": spec.get("depth", len(spec["hidden"])),
            "out_features": spec["out_features"],
            "model_seed": spec["model_seed"],
            "eps": spec["eps"],
        }
        rows.extend({**identity, **predictors, **row} for row in rule_rows)
    return rows


# --------------------------------------------------------------------------------------------
# statistics: exact proportion intervals, AUROC with DeLong's interval, a logistic fit
# --------------------------------------------------------------------------------------------
def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a binomial proportion.

    ``low = B^{-1}(a/2; k, n - k + 1)`` (0 when k = 0) and
    ``high = B^{-1}(1 - a/2; k + 1, n - k)`` (1 when k = n), B^{-1} the beta quantile,
    a = 1 - level; equivalently ``P(Bin(n, low) >= k) = a/2`` and ``P(Bin(n, high) <= k) = a/2``.
    For k = 0 the upper end is ``1 - (a/2)^(1/n)``.

    Returns:
        (low, high).

    Raises:
        InputError: trials < 1, successes outside [0, trials], or level outside (0, 1).

    """
    if trials < 1 or not 0 <= successes <= trials:
        raise InputError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if not 0 < level < 1:
        raise InputError(f"the interval level must lie in (0, 1), got {level}")
    from scipy.special import betaincinv

    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(betaincinv(successes, trials - successes + 1, tail))
    high = (
        1.0
        if successes == trials
        else float(betaincinv(successes + 1, trials - successes, 1 - tail))
    )
    return low, high


def auroc(scores: Sequence[float], labels: Sequence[bool], level: float = 0.95) -> dict[str, float]:
    """The area under the ROC curve of ``scores`` for ``labels`` and DeLong's interval.

    AUROC = P(score of a positive > score of a negative) + P(tie) / 2 (Mann-Whitney), computed
    from mid-ranks. DeLong et al. (1988): with the placement values ``V10_i`` (the AUROC of
    positive i against all negatives) and ``V01_j`` (of all positives against negative j),
    ``Var = s10 / m + s01 / n`` (sample variances), and the interval is
    ``AUROC +- z sqrt(Var)``, clipped to [0, 1]. NaN scores are dropped.

    Returns:
        ``{"auroc", "low", "high", "positives", "negatives"}`` (NaN when a class is empty).

    """
    score = np.asarray(scores, dtype=float)
    label = np.asarray(labels, dtype=bool)
    keep = np.isfinite(score)
    score, label = score[keep], label[keep]
    pos, neg = score[label], score[~label]
    m, n = pos.size, neg.size
    out = {"auroc": math.nan, "low": math.nan, "high": math.nan, "positives": m, "negatives": n}
    if m == 0 or n == 0:
        return out
    from scipy.stats import norm, rankdata

    all_ranks = rankdata(np.concatenate([pos, neg]))
    pos_ranks = rankdata(pos)
    neg_ranks = rankdata(neg)
    # V10_i = (#neg below pos_i + ties / 2) / n = (rank_all - rank_within) / n
    v10 = (all_ranks[:m] - pos_ranks) / n
    v01 = 1 - (all_ranks[m:] - neg_ranks) / m
    area = float(v10.mean())
    variance = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(variance)
    out.update(auroc=area, low=max(0.0, area - half), high=min(1.0, area + half))
    return out


def logistic_fit(
    features: np.ndarray, labels: np.ndarray, ridge: float = 1e-8, steps: int = 100
) -> dict[str, Any]:
    """Maximum-likelihood logistic regression ``P(y = 1) = sigma(b0 + x^T b)`` by Newton's method.

    The columns are standardized first (coefficients are per standard deviation); ``ridge``
    (on the slopes only) keeps Newton's system solvable under separation. Standard errors are
    ``sqrt(diag(H^{-1}))``, H the Fisher information at the optimum.

    Returns:
        ``{"coefficients", "standard_errors", "means", "scales", "converged", "log_likelihood"}``
        (the first entry of each coefficient list is the intercept).

    """
    x = np.asarray(features, dtype=float)
    y = np.asarray(labels, dtype=float)
    means, scales = x.mean(axis=0), x.std(axis=0)
    scales = np.where(scales > 0, scales, 1.0)
    design = np.column_stack([np.ones(len(y)), (x - means) / scales])
    beta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], ridge)
    penalty[0] = 0.0
    converged = False
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(design @ beta)))
        weights = p * (1 - p)
        hessian = design.T @ (design * weights[:, None]) + np.diag(penalty)
        gradient = design.T @ (y - p) - penalty * beta
        delta = np.linalg.solve(hessian, gradient)
        beta = beta + delta
        if np.max(np.abs(delta)) < 1e-10:
            converged = True
            break
    p = 1 / (1 + np.exp(-(design @ beta)))
    weights = p * (1 - p)
    hessian = design.T @ (design * weights[:, None]) + np.diag(penalty)
    errors = np.sqrt(np.diag(np.linalg.inv(hessian)))
    tiny = 1e-300
    loglik = float(np.sum(y * np.log(p + tiny) + (1 - y) * np.log(1 - p + tiny)))
    return {
        "coefficients": beta.tolist(),
        "standard_errors": errors.tolist(),
        "means": means.tolist(),
        "scales": scales.tolist(),
        "converged": converged,
        "log_likelihood": loglik,
        "fitted": p,
    }


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
# predictors scored by AUROC: (column, transform, description)
PREDICTORS: tuple[tuple[str, str], ...] = (
    ("cos_signKv_trait", "cos(sign(Kv), -grad L_T): sign of the first-order change"),
    ("cos_signKv_v", "cos(sign(Kv), v)"),
    ("sign_disagreement", "fraction of coordinates where sign(Kv) != sign(v)"),
    ("cos_v_Kv", "cos(v, Kv)"),
    ("cos_trait_Kv", "cos(-grad L_T, Kv): sign of sgd's first-order change"),
    ("cos_step_K_v", "cos(step, Kv) of the rule's step"),
    ("k_offdiagonal_fraction", "||K - diag K||_F / ||K||_F"),
    ("log10_k_condition", "log10 condition number of K (nonzero spectrum)"),
    ("k_effective_rank_fraction", "participation ratio of K over P"),
    ("log10_k_effective_rank", "log10 participation ratio of K"),
    ("log10_num_params", "log10 P"),
    ("width", "largest hidden width"),
    ("rank", "LoRA r = 1 (1) or full (0)"),
    ("log2_n_inputs", "log2 distillation inputs"),
    ("teacher_adam", "adam teacher (1) or gradient teacher (0)"),
    ("channel_aux", "aux channel (1): the student imitates only outputs the trait does not use"),
)
# the logistic fit uses only structure, not the (near-tautological) sign geometry
STRUCTURAL_PREDICTORS = (
    "cos_v_Kv",
    "k_offdiagonal_fraction",
    "log10_k_condition",
    "k_effective_rank_fraction",
    "log10_num_params",
    "rank",
    "log2_n_inputs",
    "teacher_adam",
    "channel_aux",
)


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    if isinstance(value, str):
        if value in ("True", "False"):
            return float(value == "True")
        return float(value)
    return float(value)


def _derived(row: Mapping[str, Any], name: str) -> float:
    if name == "log10_k_condition":
        value = _number(row["k_condition"])
        return math.log10(value) if value > 0 else math.nan
    if name == "log10_k_effective_rank":
        value = _number(row["k_effective_rank"])
        return math.log10(value) if value > 0 else math.nan
    if name == "log10_num_params":
        return math.log10(_number(row["num_params"]))
    if name == "log2_n_inputs":
        return math.log2(_number(row["n_inputs"]))
    if name == "teacher_adam":
        return float(row["teacher"] == "adam")
    if name == "channel_aux":
        return float(row["channel"] == "aux")
    return _number(row[name])


def _flag(value: Any) -> bool:
    return value is True or value == "True" or value == 1 or value == "1"


def rate_rows(rows: Iterable[Mapping[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Rise rates (exact change > 0) per rule and group, with Clopper-Pearson 95% intervals.

    Left out of ``n``: degenerate problems (K v = 0: no first-order step), counted in
    ``degenerate``, and changes below the rounding floor (their sign is not determined in
    float64), counted in ``unresolved``. ``n_linear``/``rises_linear`` restrict to the
    first-order regime (:func:`in_first_order_regime`).

    Returns:
        One dict per (group, rule): the group's keys, ``rule``, ``n``, ``rises``, ``rate``,
        ``low``, ``high``, ``n_linear``, ``rises_linear``, ``high_linear`` (the CP upper end of
        the rate in the first-order regime), ``rises_first_order``, ``rises_vs_control``,
        ``unresolved``, ``degenerate``.

    """
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    degenerate: dict[tuple, int] = defaultdict(int)
    unresolved: dict[tuple, int] = defaultdict(int)
    for row in rows:
        key = (*(row[k] for k in by), row["rule"])
        if _flag(row["degenerate"]):
            degenerate[key] += 1
        elif not _flag(row["resolved"]):
            unresolved[key] += 1
        else:
            groups[key].append(row)
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        members = groups[key]
        n = len(members)
        rises = sum(_flag(r["rose"]) for r in members)
        low, high = clopper_pearson(rises, n)
        linear = [r for r in members if in_first_order_regime(r)]
        rises_linear = sum(_flag(r["rose"]) for r in linear)
        high_linear = clopper_pearson(rises_linear, len(linear))[1] if linear else math.nan
        out.append(
            {
                **dict(zip(by, key[:-1])),
                "rule": key[-1],
                "n": n,
                "rises": rises,
                "rate": rises / n,
                "low": low,
                "high": high,
                "n_linear": len(linear),
                "rises_linear": rises_linear,
                "high_linear": high_linear,
                "rises_first_order": sum(_flag(r["rose_first_order"]) for r in members),
                "rises_vs_control": sum(_flag(r["rose_vs_control"]) for r in members),
                "unresolved": unresolved[key],
                "degenerate": degenerate[key],
            }
        )
    return out


def in_first_order_regime(row: Mapping[str, Any], tolerance: float = 0.5) -> bool:
    """Whether the step is small enough for the first-order change to describe the exact one.

    ``|exact - first order| <= tolerance |first order|``: then both have the same sign, and a
    rise is the first-order effect the theory is about, not an overshoot of a large step.

    Returns:
        The flag (False when the first-order change is 0 or missing).

    """
    exact, first = _number(row["change_exact"]), _number(row["change_first_order"])
    if not (math.isfinite(exact) and math.isfinite(first)) or first == 0:
        return False
    return abs(exact - first) <= tolerance * abs(first)


def _percent(low: float, high: float) -> str:
    return f"[{100 * low:.1f}%, {100 * high:.1f}%]"


def _rate_text(entry: Mapping[str, Any]) -> str:
    return (
        f"{entry['rises']}/{entry['n']} = {100 * entry['rate']:.1f}% "
        f"{_percent(entry['low'], entry['high'])}"
    )


def report(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> str:
    """Write the tidy CSV, the rates, the predictor scores and ``table.md``; return the table.

    Files: ``sign_population.csv`` (every row, floats to 10 significant digits),
    ``rates.csv`` (per rule x stratum and per stratum x factor), ``predictors.csv`` (AUROC per
    rule x predictor, population stratum), ``logistic.csv`` and ``table.md``.

    Returns:
        The Markdown of ``table.md``.

    Raises:
        InputError: no rows.

    """
    if not rows:
        raise InputError("no rows to report; run the units first")
    out = Path(out_dir)
    # 10 significant digits: the signs and sizes the report uses, at 2/3 of repr's size; NaN
    # as an empty cell, as rows read back from a unit's JSON (null) have it
    compact = [{k: _cell(x) for k, x in r.items()} for r in rows]
    runs.atomic_write_csv(out / "sign_population.csv", compact, list(COLUMNS))
    lines = ["# One student step at the shared init: how often the trait loss rises", ""]
    lines += [
        "Exact Delta L_T = L_T(theta_S0 + s) - L_T(theta_S0) > 0 after one step s of each rule "
        "(float64); rates with Clopper-Pearson 95% intervals. At the shared init the control "
        "step is 0, so 'vs control' equals 'exact'. `first-order rises` count "
        "<grad L_T, s1> > 0 for the predicted step s1; `unresolved` counts |Delta L_T| below "
        "1024 u max(|L_T|, 1) (left out of n); `degenerate` problems (K v = 0 to rounding: "
        "the student does not move at first order, e.g. LoRA on a CNN's head when the trait "
        "and the imitated outputs are disjoint rows) are left out of n.",
        "",
        "## Rates per stratum",
        "",
        "| stratum | rule | rises / n = rate [95% CP] | rises / n in the first-order regime "
        "| first-order rises | unresolved (left out) | degenerate (left out) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_stratum = rate_rows(rows, ["stratum"])
    for entry in by_stratum:
        lines.append(
            f"| {entry['stratum']} | {entry['rule']} | {_rate_text(entry)} | "
            f"{entry['rises_linear']}/{entry['n_linear']} | {entry['rises_first_order']} | "
            f"{entry['unresolved']} | {entry['degenerate']} |"
        )
    same = all(e["rises_vs_control"] == e["rises"] for e in by_stratum)
    lines += [
        "",
        "'first-order regime': |exact - first-order change| <= 0.5 |first-order change|. "
        f"Rises against the control step equal the exact rises in every row: {same}.",
    ]
    zero = [e for e in by_stratum if e["rises"] == 0]
    theorem = [dict(r) for r in rows if r["rule"] == "sgd" and r["teacher"] == "gradient"]
    for row in theorem:
        row["scope"] = "sgd, gradient teacher, every stratum"
    checked = rate_rows(theorem, ["scope"])
    lines += [
        "",
        "Where no problem rose, the largest rate n allows (two-sided 95% CP upper end; "
        "one-sided 95%: 1 - 0.05^(1/n)):",
        "",
    ]
    for entry in checked:
        n_linear, k_linear = entry["n_linear"], entry["rises_linear"]
        lines.append(
            f"- sgd with the gradient teacher (first order: Delta L_T = -alpha eps v^T K v <= 0), "
            f"every stratum: {entry['rises']}/{entry['n']} rose; in the first-order regime "
            f"{k_linear}/{n_linear}, upper {100 * entry['high_linear']:.2f}% "
            f"(one-sided {100 * (1 - 0.05 ** (1 / n_linear)):.2f}%)"
            if k_linear == 0 and n_linear
            else f"- sgd with the gradient teacher: {_rate_text(entry)}; first-order regime "
            f"{k_linear}/{n_linear}"
        )
    for entry in zero:
        one_sided = 1 - 0.05 ** (1 / entry["n"])
        lines.append(
            f"- {entry['stratum']} {entry['rule']}: 0/{entry['n']}, upper "
            f"{100 * entry['high']:.2f}% (one-sided {100 * one_sided:.2f}%)"
        )
    factors = (
        "channel",
        "channel_teacher",
        "family",
        "parameterization",
        "teacher",
        "loss",
        "input_distribution",
        "n_inputs",
        "depth",
        "p_bin",
    )
    population = [dict(r) for r in rows if r["stratum"] == "population"]
    for row in population:
        row["channel_teacher"] = f"{row['channel']}/{row['teacher']}"
        p = int(_number(row["num_params"]))
        row["p_bin"] = (
            "P<50" if p < 50 else "50<=P<200" if p < 200 else "200<=P<800" if p < 800 else "P>=800"
        )
    all_rates = [{"factor": "stratum", "level": e["stratum"], **e} for e in by_stratum]
    if population:
        lines += ["", "## Population: rates per factor (signsgd | adam | sgd)", ""]
        lines += [
            "| factor | level | signsgd | adam | sgd |",
            "| --- | --- | --- | --- | --- |",
        ]
        for factor in factors:
            entries = rate_rows(population, [factor])
            levels = sorted({str(e[factor]) for e in entries}, key=_level_key)
            for level in levels:
                cells = {e["rule"]: e for e in entries if str(e[factor]) == level}
                lines.append(
                    f"| {factor} | {level} | "
                    + " | ".join(_rate_text(cells[r]) if r in cells else "" for r in SHOWN)
                    + " |"
                )
            all_rates += [{"factor": factor, "level": e[factor], **e} for e in entries]
    rate_columns = [
        "factor",
        "level",
        "rule",
        "n",
        "rises",
        "rate",
        "low",
        "high",
        "rises_first_order",
        "rises_vs_control",
        "n_linear",
        "rises_linear",
        "high_linear",
        "unresolved",
        "degenerate",
    ]
    runs.atomic_write_csv(
        out / "rates.csv",
        [{k: e.get(k) for k in rate_columns} for e in all_rates],
        rate_columns,
    )
    scored = _predictor_scores(population or list(rows))
    runs.atomic_write_csv(out / "predictors.csv", scored, list(scored[0]) if scored else [])
    fits = _logistic_rows(population or list(rows))
    runs.atomic_write_csv(out / "logistic.csv", fits, list(fits[0]) if fits else [])
    lines += [
        "",
        "## What separates rises (population stratum)",
        "",
        "AUROC of each predictor for 'rose' (DeLong 95% interval); 0.5 = no separation, below "
        "0.5 = lower values go with rises. `cos_signKv_trait` is the sign of the sign step's "
        "first-order change and `cos_trait_Kv` that of sgd's (near-tautological); for the "
        "gradient teacher `cos_signKv_v` is the same as `cos_signKv_trait`.",
        "",
        "| predictor | " + " | ".join(SHOWN) + " |",
        "| --- | " + " | ".join("---" for _ in SHOWN) + " |",
    ]
    for name, description in PREDICTORS:
        cells = []
        for rule in SHOWN:
            match = [s for s in scored if s["predictor"] == name and s["rule"] == rule]
            entry = match[0] if match else None
            cells.append(
                f"{entry['auroc']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"
                if entry and math.isfinite(entry["auroc"])
                else "n/a"
            )
        lines.append(f"| {description} (`{name}`) | " + " | ".join(cells) + " |")
    if fits:
        lines += [
            "",
            "Logistic fit of 'rose' on the structural predictors (standardized; coefficient per "
            "SD, Wald 95% interval), with its in-sample AUROC:",
            "",
            "| rule | term | coefficient [95%] |",
            "| --- | --- | --- |",
        ]
        for fit in fits:
            lines.append(
                f"| {fit['rule']} | {fit['term']} | {fit['coefficient']:+.3f} "
                f"[{fit['low']:+.3f}, {fit['high']:+.3f}] |"
            )
    oracle = {(r["stratum"], r["problem"]): _number(r["k_v_oracle_error"]) for r in rows}
    finite = [x for x in oracle.values() if math.isfinite(x)]
    lines += [
        "",
        f"Oracle: the engine's K v (jvp/vjp) against the explicit K v: largest relative "
        f"difference {max(finite, default=math.nan):.1e} over {len(finite)} non-degenerate "
        "problems.",
        "",
    ]
    text = "\n".join(lines)
    runs.atomic_write_text(out / "table.md", text)
    return text


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.10g}" if math.isfinite(value) else ""
    return value


def _level_key(level: str) -> tuple:
    try:
        return (0, float(level), "")
    except ValueError:
        order = {"P<50": 0, "50<=P<200": 1, "200<=P<800": 2, "P>=800": 3}
        return (1, order.get(level, 9), level)


def _predictor_scores(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    scored = []
    for rule in RULES:
        members = [
            r
            for r in rows
            if r["rule"] == rule and not _flag(r["degenerate"]) and _flag(r["resolved"])
        ]
        labels = [_flag(r["rose"]) for r in members]
        for name, description in PREDICTORS:
            values = [_derived(r, name) for r in members]
            result = auroc(values, labels)
            scored.append({"rule": rule, "predictor": name, "description": description, **result})
    return scored


def _logistic_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from scipy.stats import norm

    z = float(norm.ppf(0.975))
    out = []
    for rule in RULES:
        members = [
            r
            for r in rows
            if r["rule"] == rule and not _flag(r["degenerate"]) and _flag(r["resolved"])
        ]
        labels = np.array([_flag(r["rose"]) for r in members], dtype=float)
        if labels.sum() < 5 or (1 - labels).sum() < 5:
            continue
        features = np.array(
            [[_derived(r, name) for name in STRUCTURAL_PREDICTORS] for r in members]
        )
        keep = np.all(np.isfinite(features), axis=1)
        fit = logistic_fit(features[keep], labels[keep])
        area = auroc(fit["fitted"], labels[keep].astype(bool))
        terms = ("intercept", *STRUCTURAL_PREDICTORS)
        for term, coefficient, error in zip(terms, fit["coefficients"], fit["standard_errors"]):
            out.append(
                {
                    "rule": rule,
                    "term": term,
                    "coefficient": coefficient,
                    "standard_error": error,
                    "low": coefficient - z * error,
                    "high": coefficient + z * error,
                    "n": int(keep.sum()),
                    "converged": fit["converged"],
                }
            )
        out.append(
            {
                "rule": rule,
                "term": "in-sample AUROC",
                "coefficient": area["auroc"],
                "standard_error": math.nan,
                "low": area["low"],
                "high": area["high"],
                "n": int(keep.sum()),
                "converged": fit["converged"],
            }
        )
    return out
