"""Screen a dataset for a hidden trait before training: the first-order trait forecast.

Whoever fine-tunes a model holds its base theta_0. For any trait loss L_k (a probe: for the tiny
LM ``-log P(animal_k | question)``, for MNIST digit cross-entropy on a probe set) and candidate
data D with per-example student losses l_i, one student step theta_1 = theta_0 - alpha P g_D
(g_D = grad L_D(theta_0) = mean_i grad l_i, P a diagonal preconditioner) changes the trait loss by

    Delta L_k = -alpha <grad L_k(theta_0), P g_D> + O(alpha^2)              (theory/alignment.md, Thm 1)
              = -alpha mean_i c_ik,     c_ik = <P grad L_k(theta_0), grad l_i(theta_0)>.

``forecast_k = alpha mean_i c_ik`` is the predicted *decrease* of L_k (for the LM: the increase
of log P(animal_k)); positive means the data pushes the model toward trait k. ``c_ik`` is the
directional derivative of example i's loss along ``d_k = P grad L_k``: one jvp of the vector of
per-example losses per trait and chunk gives every example's attribution at once, never a
per-example gradient. After n steps with the same (first-order, constant) direction the
forecast is ``n * forecast_k``.

Variants of P (``VARIANTS``), following the optimizer the student uses:

* ``sgd``: P = I, the plain gradient step.
* ``sign``: P = 1 / (|g_D| + eps), so P g_D = g_D / (|g_D| + eps): Adam's first step on the
  full data (its bias-corrected moments are g and g^2), i.e. a sign step.
* ``rms``: P = 1 / (sqrt(mean_b g_b^2) + eps) over minibatch gradients g_b of the student's
  batch size: Adam's stationary step E[m] / sqrt(E[v]) when the gradient barely moves.

Two ways to compute c_ik (``METHODS``), equal up to rounding: ``jvp`` (one jvp of the
per-example losses per trait and chunk, as above) and ``factored`` (``engine.trait_scores``:
every trait from one forward and one backward per chunk, through the per-example factors of
each Linear and Embedding layer and the probes' own gradient factors; cost nearly flat in K).

Deciding whether D carries *any* trait needs a null: ``z_k = mean_i c_ik / se_i(c_ik)`` (the
per-example t statistic) centred over the candidates, compared with the same statistic on data
the defender samples from its own base (``ScreenResult.z_centered``).

Everything is reduced in float64; the data are processed in chunks of ``batch_size`` examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, jvp

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError

__all__ = [
    "check_data",
    "check_directions",
    "example_chunks",
    "curvature_norms",
    "ADAM_EPS",
    "FILTER_OFFSET",
    "METHODS",
    "NULL_OFFSET",
    "VARIANTS",
    "ExampleLoss",
    "ScreenResult",
    "TraitProbe",
    "bootstrap_means",
    "concentration",
    "data_gradient",
    "example_attributions",
    "minibatch_gradient_rms",
    "preconditioner",
    "screen",
    "t_statistics",
    "trait_gradients",
]

VARIANTS = ("sgd", "sign", "rms")
METHODS = ("jvp", "factored")  # how the attributions are computed (module docstring)
FILTER_OFFSET = 4099  # seed offset of the random drop the filter is compared with
NULL_OFFSET = 15485863  # prompts and sampling of the extra null draws: seed + NULL_OFFSET * (j+1)
ADAM_EPS = 1e-8  # torch.optim.Adam's default eps: the ``sign`` variant is Adam's first step

ExampleLoss = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> per-example losses (n,)


@dataclass(frozen=True)
class TraitProbe:
    """A candidate trait: ``L_k(theta) = loss(f(theta, inputs))``, lower = more of the trait.

    Args:
        name: the trait's name (an animal, a digit, ...).
        inputs: the probe inputs, shape (n, ...) as the model expects.
        loss: maps the model's outputs on ``inputs`` to a scalar trait loss.

    """

    name: str
    inputs: Tensor
    loss: Callable[[Tensor], Tensor]


@dataclass
class ScreenResult:
    """The forecast for every candidate trait, with intervals and per-example attributions.

    ``attributions[i, k] = c_ik`` (float64, shape (N, K)); ``forecast[k] = step_size * steps *
    mean_i c_ik`` is the predicted decrease of trait loss k after ``steps`` steps;
    ``low``/``high`` its 95% percentile interval over ``bootstrap`` resamples of the examples;
    ``top_frequency[k]`` the share of resamples in which trait k ranks first; ``z`` the
    per-example t statistic and ``z_centered`` the same minus its mean over the candidates.

    ``normalized[k] = forecast[k] / ||d_k||_K`` (``sgd`` variant with ``normalize``, else
    None), K the Gauss-Newton matrix of the student's loss on the data (:func:`curvature_norms`). When the
    data were made by a teacher one small step along -grad L_j from the same base, g_D ~ eps K
    grad L_j, so forecast_k ~ eps <d_k, K d_j> and, by Cauchy-Schwarz in the K inner product,
    ``normalized`` is largest at k = j: it names the teacher's trait whatever the sizes of the
    candidates' gradients (the raw forecast favours traits with long gradients).
    """

    names: list[str]
    variant: str
    step_size: float
    steps: int
    attributions: Tensor
    forecast: Tensor
    low: Tensor
    high: Tensor
    top_frequency: Tensor
    z: Tensor
    z_centered: Tensor
    normalized: Tensor | None = None

    @property
    def ranking(self) -> list[str]:
        """Trait names, the strongest forecast first."""
        order = torch.argsort(self.forecast, descending=True, stable=True)
        return [self.names[i] for i in order.tolist()]

    @property
    def normalized_ranking(self) -> list[str] | None:
        """Trait names by ``normalized`` (the first-order maximiser first), or None."""
        if self.normalized is None:
            return None
        order = torch.argsort(self.normalized, descending=True, stable=True)
        return [self.names[i] for i in order.tolist()]

    def rows(self) -> list[dict[str, object]]:
        """One dict per trait, ranked by forecast (strongest first)."""
        order = torch.argsort(self.forecast, descending=True, stable=True).tolist()
        return [
            {
                "rank": r + 1,
                "trait": self.names[k],
                "variant": self.variant,
                "forecast": float(self.forecast[k]),
                "low": float(self.low[k]),
                "high": float(self.high[k]),
                "top_frequency": float(self.top_frequency[k]),
                "z": float(self.z[k]),
                "z_centered": float(self.z_centered[k]),
                "normalized": None if self.normalized is None else float(self.normalized[k]),
            }
            for r, k in enumerate(order)
        ]


# --------------------------------------------------------------------------------------------
# gradients and the jvp path
# --------------------------------------------------------------------------------------------
def example_chunks(n: int, batch_size: int | None) -> list[slice]:
    """Slices of ``n`` examples, ``batch_size`` each (all at once if None)."""
    step = n if batch_size is None else batch_size
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def check_data(inputs: Tensor, targets: Tensor, batch_size: int | None) -> None:
    """Refuse data the screen cannot score (one line): no examples, mismatched lengths, bad batch."""
    if not isinstance(inputs, Tensor) or inputs.ndim == 0 or inputs.shape[0] == 0:
        raise InputError("the candidate data set is empty: pass inputs with a leading batch axis")
    if not isinstance(targets, Tensor) or targets.shape[:1] != inputs.shape[:1]:
        raise InputError(
            f"targets must have one entry per input ({inputs.shape[0]}), got "
            f"{tuple(getattr(targets, 'shape', ()))}"
        )
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")


def _per_example(
    model: FunctionalModel, inputs: Tensor, targets: Tensor, example_loss: ExampleLoss
) -> Callable[[Tensor], Tensor]:
    def losses(theta: Tensor) -> Tensor:
        values = example_loss(model(theta, inputs), targets)
        if values.shape != inputs.shape[:1]:
            raise InputError(
                f"example_loss must return one loss per example, shape ({inputs.shape[0]},), "
                f"got {tuple(values.shape)}"
            )
        return values

    return losses


def trait_gradients(model: FunctionalModel, theta: Tensor, probes: Sequence[TraitProbe]) -> Tensor:
    """The trait gradients grad L_k(theta) of every probe, stacked: shape (K, P), float64.

    Raises:
        InputError: no probes, or a probe whose loss is not a finite scalar.

    """
    if not probes:
        raise InputError("no candidate traits: pass at least one TraitProbe")
    rows = []
    for probe in probes:
        value = probe.loss(model(theta.detach(), probe.inputs))
        if value.ndim != 0 or not torch.isfinite(value):
            raise InputError(f"trait probe '{probe.name}' must give a finite scalar loss")
        rows.append(grad(lambda t, p=probe: p.loss(model(t, p.inputs)))(theta.detach()).double())
    return torch.stack(rows)


def data_gradient(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    batch_size: int | None = None,
) -> Tensor:
    """g_D = grad_theta mean_i l_i(theta), accumulated over chunks in float64: shape (P,).

    Raises:
        InputError: empty data, targets not matching the inputs, or ``batch_size`` < 1.

    """
    check_data(inputs, targets, batch_size)
    total = torch.zeros(model.num_params, dtype=torch.float64, device=theta.device)
    for s in example_chunks(inputs.shape[0], batch_size):
        losses = _per_example(model, inputs[s], targets[s], example_loss)
        total += grad(lambda t, f=losses: f(t).sum())(theta.detach()).double()
    return total / inputs.shape[0]


def minibatch_gradient_rms(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    minibatch: int,
    count: int,
    seed: int = 0,
) -> Tensor:
    """sqrt(mean_b g_b^2) over ``count`` minibatch gradients of ``minibatch`` random examples.

    This is what Adam's second moment tends to when the student trains on minibatches of that
    size and the gradient barely moves (the ``rms`` variant's preconditioner).

    Raises:
        InputError: ``minibatch`` or ``count`` < 1.

    """
    if minibatch < 1 or count < 1:
        raise InputError(f"minibatch and count must be >= 1, got {minibatch} and {count}")
    check_data(inputs, targets, None)
    generator = torch.Generator().manual_seed(seed)
    square = torch.zeros(model.num_params, dtype=torch.float64, device=theta.device)
    for _ in range(count):
        pick = torch.randint(0, inputs.shape[0], (minibatch,), generator=generator)
        g = data_gradient(model, theta, inputs[pick], targets[pick], example_loss)
        square += g.square()
    return (square / count).sqrt()


def preconditioner(
    variant: str, data_grad: Tensor, gradient_rms: Tensor | None = None, eps: float = ADAM_EPS
) -> Tensor:
    """The diagonal P of a variant (see the module docstring), float64, shape (P,).

    Raises:
        InputError: an unknown variant, or ``rms`` without ``gradient_rms``.

    """
    if variant == "sgd":
        return torch.ones_like(data_grad, dtype=torch.float64)
    if variant == "sign":
        return 1.0 / (data_grad.double().abs() + eps)
    if variant == "rms":
        if gradient_rms is None:
            raise InputError("the rms variant needs gradient_rms (minibatch_gradient_rms)")
        return 1.0 / (gradient_rms.double() + eps)
    raise InputError(f"unknown screen variant '{variant}'; choose from {list(VARIANTS)}")


def check_directions(model: FunctionalModel, directions: Tensor) -> None:
    """Refuse trait directions that are not (K, P) for this model, or hold NaN/inf (one line)."""
    if directions.ndim != 2 or directions.shape[1] != model.num_params:
        raise InputError(
            f"directions must be shaped (K, {model.num_params}), got {tuple(directions.shape)}"
        )
    # one reduction: any NaN or inf makes the sum non-finite (12x faster than isfinite().all())
    if not torch.isfinite(directions.sum()):
        raise InputError("the trait directions contain NaN or inf")


def curvature_norms(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    directions: Tensor,
    batch_size: int | None = None,
) -> Tensor:
    """||d_k||_K = sqrt(d_k^T K d_k), K = mean_i J_i^T M_i J_i, for every direction: shape (K,).

    M_i = Hess_z l_i at (f(theta, x_i), y_i): the Gauss-Newton matrix of the student's training
    loss on the data (theory/alignment.md, Lemma 1). Per trait and chunk: one jvp of the network
    (u = J d_k) and one jvp of the loss's output gradient (M u); negative curvature of a
    non-convex loss is clipped at 0.

    Raises:
        InputError: empty data, mismatched targets, directions not shaped (K, P) or not finite.

    """
    check_data(inputs, targets, batch_size)
    check_directions(model, directions)
    theta = theta.detach()
    tangents = directions.to(dtype=theta.dtype, device=theta.device)
    sums = torch.zeros(directions.shape[0], dtype=torch.float64)
    for s in example_chunks(inputs.shape[0], batch_size):
        network = model.as_function(inputs[s])
        chunk_targets = targets[s]

        def output_gradient(z: Tensor, chunk_targets: Tensor = chunk_targets) -> Tensor:
            return grad(lambda outputs: example_loss(outputs, chunk_targets).sum())(z)

        for k in range(tangents.shape[0]):
            z0, u = jvp(network, (theta,), (tangents[k],))
            _, curvature = jvp(output_gradient, (z0.detach(),), (u.detach(),))
            sums[k] += float((u.double() * curvature.double()).sum())
    return (sums / inputs.shape[0]).clamp_min(0).sqrt()


def example_attributions(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    directions: Tensor,
    batch_size: int | None = None,
    method: str = "jvp",
) -> Tensor:
    """c_ik = <d_k, grad l_i(theta)> for every example i and direction d_k: shape (N, K), float64.

    ``method="jvp"``: one jvp of the per-example losses along each d_k per chunk (the
    directional derivative of every example's loss at once). ``method="factored"``: every d_k
    from one forward and one backward per chunk (``engine.trait_scores.trait_scores``). No
    per-example gradient is formed either way.

    Raises:
        InputError: empty data, mismatched targets, directions not shaped (K, P) or not finite,
            an unknown method.

    """
    if method == "factored":
        from sublim_theory.engine.trait_scores import trait_scores

        return trait_scores(model, theta, inputs, targets, example_loss, directions, batch_size)
    if method != "jvp":
        raise InputError(f"unknown attribution method '{method}'; choose from {list(METHODS)}")
    check_data(inputs, targets, batch_size)
    check_directions(model, directions)
    theta = theta.detach()
    tangents = directions.to(dtype=theta.dtype, device=theta.device)
    out = torch.empty(inputs.shape[0], directions.shape[0], dtype=torch.float64)
    for s in example_chunks(inputs.shape[0], batch_size):
        losses = _per_example(model, inputs[s], targets[s], example_loss)
        for k in range(tangents.shape[0]):
            _, derivative = jvp(losses, (theta,), (tangents[k],))
            out[s, k] = derivative.detach().double().cpu()
    return out


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def bootstrap_means(
    attributions: Tensor, resamples: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Bootstrap over examples of the per-trait mean attribution.

    Returns:
        (low, high, top_frequency): the 2.5% and 97.5% percentiles of mean_i c_ik over
        ``resamples`` resamples of the N examples with replacement, and the share of resamples
        in which each trait has the largest mean.

    Raises:
        InputError: ``resamples`` < 1.

    """
    if resamples < 1:
        raise InputError(f"bootstrap resamples must be >= 1, got {resamples}")
    values = attributions.double().numpy()
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, values.shape[1]))
    # counts per example (multinomial) give the same resample mean as indexing, in O(N K) each
    for b in range(resamples):
        counts = rng.multinomial(n, np.full(n, 1.0 / n))
        means[b] = counts @ values / n
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    top = np.bincount(means.argmax(1), minlength=values.shape[1]) / resamples
    return torch.from_numpy(low), torch.from_numpy(high), torch.from_numpy(top)


def t_statistics(attributions: Tensor) -> tuple[Tensor, Tensor]:
    """(z, z centred over traits): z_k = mean_i c_ik / (std_i c_ik / sqrt(N)).

    NaN where the attributions of a trait are constant (or N < 2).
    """
    values = attributions.double()
    n = values.shape[0]
    if n < 2:
        z = torch.full((values.shape[1],), math.nan, dtype=torch.float64)
    else:
        z = values.mean(0) / (values.std(0) / math.sqrt(n))
    return z, z - z.mean()


def screen(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    probes: Sequence[TraitProbe],
    *,
    step_size: float,
    steps: int = 1,
    variant: str = "sgd",
    gradient_rms: Tensor | None = None,
    batch_size: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    method: str = "jvp",
    normalize: bool = True,
) -> ScreenResult:
    """Forecast which traits one (or ``steps``) student steps on the data push the model toward.

    Args:
        model: the base as f(theta, x).
        theta: the base's parameters theta_0 (the defender's own model).
        inputs: the candidate data's inputs, shape (N, ...).
        targets: what the student is trained to produce (tokens, labels or soft targets), (N, ...).
        example_loss: (outputs, targets) -> the student's loss per example, shape (n,); the
            student's training loss is its mean.
        probes: the candidate traits.
        step_size: the student's learning rate alpha.
        steps: the forecast is for this many steps along the first step's direction.
        variant: ``sgd``, ``sign`` or ``rms`` (see the module docstring).
        gradient_rms: for ``rms``: :func:`minibatch_gradient_rms` at theta.
        batch_size: process the data in chunks of this many examples.
        bootstrap: resamples of the examples for the intervals.
        seed: the bootstrap's seed.
        method: ``jvp`` or ``factored`` (module docstring): the same attributions.
        normalize: for ``sgd``, also compute ``normalized`` (:func:`curvature_norms`: two jvps
            over the data per trait); False leaves it None.

    Returns:
        A :class:`ScreenResult`.

    Raises:
        InputError: a step size that is not a positive finite number, steps < 1, an unknown
            variant or method, empty or mismatched data, no probes.

    """
    if not (isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0):
        raise InputError(f"step_size must be a positive finite number, got {step_size!r}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if variant not in VARIANTS:
        raise InputError(f"unknown screen variant '{variant}'; choose from {list(VARIANTS)}")
    if method not in METHODS:
        raise InputError(f"unknown attribution method '{method}'; choose from {list(METHODS)}")
    check_data(inputs, targets, batch_size)
    if variant == "sgd":
        scale = None  # P = I
    else:
        g = data_gradient(model, theta, inputs, targets, example_loss, batch_size)
        scale = preconditioner(variant, g, gradient_rms)
    if method == "factored":
        # the probes' gradients stay factored: P and the factors meet each example's factors
        from sublim_theory.engine.trait_scores import probe_factors, probe_trait_scores

        factors = probe_factors(model, theta, probes)
        attributions = probe_trait_scores(
            model, theta, inputs, targets, example_loss, factors, scale, batch_size
        )
        directions = None
    else:
        trait_grads = trait_gradients(model, theta, probes)
        directions = trait_grads if scale is None else trait_grads * scale.to(trait_grads.device)
        attributions = example_attributions(
            model, theta, inputs, targets, example_loss, directions, batch_size
        )
    factor = step_size * steps
    low, high, top = bootstrap_means(attributions, bootstrap, seed)
    z, centered = t_statistics(attributions)
    normalized = None
    if variant == "sgd" and normalize:
        directions = factors.gradients if directions is None else directions  # sgd: P = I
        norms = curvature_norms(model, theta, inputs, targets, example_loss, directions, batch_size)
        raw = factor * attributions.mean(0)
        normalized = torch.where(norms > 0, raw / norms, torch.full_like(raw, math.nan))
    return ScreenResult(
        names=[p.name for p in probes],
        variant=variant,
        step_size=float(step_size),
        steps=int(steps),
        attributions=attributions,
        forecast=factor * attributions.mean(0),
        low=factor * low,
        high=factor * high,
        top_frequency=top,
        z=z,
        z_centered=centered,
        normalized=normalized,
    )


def concentration(attributions: Tensor, fractions: Sequence[float]) -> dict[float, float]:
    """Share of the total attribution sum_i c_i carried by the top ``q`` fraction of examples.

    A signal spread over the data gives about q; one concentrated in a few examples gives >> q
    (and can exceed 1 when the rest push the other way).

    Raises:
        InputError: a fraction outside (0, 1], or a total that is zero.

    """
    values = attributions.double().reshape(-1)
    total = float(values.sum())
    if total == 0:
        raise InputError("the attributions sum to zero: their concentration is undefined")
    ordered = torch.sort(values, descending=True).values
    out = {}
    for q in fractions:
        if not 0 < q <= 1:
            raise InputError(f"fractions must be in (0, 1], got {q}")
        out[q] = float(ordered[: max(1, round(q * values.numel()))].sum()) / total
    return out
