"""Gradient attributions exact and through a random projection (what TRAK/LoGra-style tools do).

The screen's attribution of example i to trait k is c_ik = <g_i, v_k>, g_i = grad l_i(theta) the
example's loss gradient and v_k = grad L_k(theta) the trait direction (``engine.screen``). Tools
that cannot hold per-example gradients of a large model store a random projection P g_i in R^d
instead, d << p, and score

    c~_ik = <P g_i, P v_k> = g_i^T (P^T P) v_k,                   P in R^{d x p}, E[P^T P] = I.

P here is dense with independent entries, ``gaussian`` N(0, 1/d) or ``rademacher`` +-1/sqrt(d),
so c~_ik is unbiased and (Johnson-Lindenstrauss) its error is, for fixed g and v,

    Var c~ = (|g|^2 |v|^2 + <g, v>^2) / d                         (gaussian)
    Var c~ = (|g|^2 |v|^2 + <g, v>^2 - 2 sum_j g_j^2 v_j^2) / d   (rademacher)

(:func:`projection_variance`): the error falls like d^{-1/2} relative to |g||v|, not to
|<g, v>|, so an attribution whose cosine is small (a subliminal one) needs d >> 1/cos^2.

Memory: P is never held whole. It is generated in blocks of ``BLOCK`` parameter columns, block b
from its own generator seeded by ``numpy.random.SeedSequence([seed, b])`` (so a block is the same
whatever else is generated, and P is a function of (seed, d, p, kind) alone); a projection
streams over the blocks, holding one d x BLOCK block at a time.

Two paths give c~ (equal up to rounding, tested):

* :func:`projected_attributions`: as the tools do, per-example gradients (chunks of examples,
  ``torch.func.vmap`` over the examples of a chunk) projected to P g_i and scored against P v_k;
* :func:`projected_directions` then :func:`gradient_attributions`: w_k = P^T P v_k is formed once
  (two streams over the blocks) and c~_ik = <g_i, w_k> scored like an exact attribution, so
  every d and projection seed costs one matrix product per chunk and all of them share one
  pass of per-example gradients. The study uses this path.

:func:`gradient_attributions` with the unprojected v_k is the exact attribution from explicit
per-example gradients; it equals ``engine.screen.example_attributions`` (the jvp path).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, vmap

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.screen import ExampleLoss, check_data, check_directions, example_chunks
from sublim_theory.errors import InputError

__all__ = [
    "BLOCK",
    "KINDS",
    "gradient_attributions",
    "per_example_gradients",
    "project",
    "projected_attributions",
    "projected_directions",
    "projection_blocks",
    "projection_matrix",
    "projection_variance",
]

KINDS = ("gaussian", "rademacher")
BLOCK = 2048  # parameter columns of P generated at once (P depends on it: fixed, not a setting)
MAX_DIM = 2**20  # a projection dimension beyond any use, far below one that fills memory


def _check(dim: int, kind: str, seed: int) -> None:
    if not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise InputError(f"projection dimension d must be an integer in 1..{MAX_DIM}, got {dim}")
    if kind not in KINDS:
        raise InputError(f"unknown projection kind '{kind}'; choose from {list(KINDS)}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"projection seed must be an integer >= 0, got {seed}")


def projection_blocks(
    num_params: int, dim: int, seed: int, kind: str = "gaussian"
) -> Iterator[tuple[slice, Tensor]]:
    """The column blocks of P in R^{dim x num_params}, ``BLOCK`` columns each, in order.

    Block b (columns b*BLOCK ..) is drawn from a generator seeded by
    ``SeedSequence([seed, b])``; entries are N(0, 1/dim) (``gaussian``) or +-1/sqrt(dim) with
    probability 1/2 each (``rademacher``), so E[P^T P] = I. The draws are float32 (3-4x faster
    than float64 on a CPU; a float32 normal is still a symmetric draw, so E[P^T P] = I up to
    float32 rounding of the scale) and returned as float64 for the products.

    Yields:
        (columns, block): the parameter slice and the (dim, len(columns)) block of P.

    Raises:
        InputError: dim outside 1..MAX_DIM, an unknown kind or a negative seed.

    """
    _check(dim, kind, seed)
    scale = 1.0 / math.sqrt(dim)
    for b, start in enumerate(range(0, num_params, BLOCK)):
        columns = slice(start, min(start + BLOCK, num_params))
        width = columns.stop - columns.start
        state = np.random.SeedSequence([seed, b]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        if kind == "gaussian":
            block = torch.randn(dim, width, generator=generator, dtype=torch.float32)
        else:
            block = torch.empty(dim, width).bernoulli_(0.5, generator=generator).mul_(2).sub_(1)
        yield columns, block.double().mul_(scale)


def projection_matrix(num_params: int, dim: int, seed: int, kind: str = "gaussian") -> Tensor:
    """P whole, (dim, num_params), float64: for tests and small models (the blocks concatenated)."""
    return torch.cat([b for _, b in projection_blocks(num_params, dim, seed, kind)], 1)


def project(vectors: Tensor, dim: int, seed: int, kind: str = "gaussian") -> Tensor:
    """P x for every row x of ``vectors`` (n, p): shape (n, dim), float64, streamed over blocks.

    Returns:
        The projected rows, shape (n, dim), float64.

    Raises:
        InputError: ``vectors`` not 2-D, or a bad dim, kind or seed.

    """
    if vectors.ndim != 2:
        raise InputError(f"vectors must be shaped (n, p), got {tuple(vectors.shape)}")
    values = vectors.detach().double().cpu()
    out = torch.zeros(values.shape[0], dim, dtype=torch.float64)
    for columns, block in projection_blocks(values.shape[1], dim, seed, kind):
        out += values[:, columns] @ block.T
    return out


def projected_directions(directions: Tensor, dim: int, seed: int, kind: str = "gaussian") -> Tensor:
    """w_k = P^T P v_k for every row v_k of ``directions`` (K, p): shape (K, p), float64.

    <g, w_k> = <P g, P v_k> for every g, so scoring w_k exactly gives the projected attribution.
    Two streams over the blocks of P (P v, then P^T (P v)); never more than one block held.

    Returns:
        w, shape (K, p), float64.

    Raises:
        InputError: ``directions`` not 2-D or not finite, or a bad dim, kind or seed.

    """
    if directions.ndim != 2 or not torch.isfinite(directions.sum()):
        raise InputError(
            f"directions must be a finite (K, p) matrix, got {tuple(directions.shape)}"
        )
    small = project(directions, dim, seed, kind)
    out = torch.empty(directions.shape, dtype=torch.float64)
    for columns, block in projection_blocks(directions.shape[1], dim, seed, kind):
        out[:, columns] = small @ block
    return out


def per_example_gradients(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    batch_size: int | None = None,
) -> Iterator[tuple[slice, Tensor]]:
    """Per-example loss gradients g_i = grad l_i(theta), one chunk of examples at a time.

    Each chunk is ``torch.func.vmap`` of ``grad`` over its examples (each example is its own
    batch of one, so l_i depends on example i alone); only one chunk's (n_chunk, p) gradients
    exist at once.

    Yields:
        (examples, gradients): the slice of examples and their gradients (n_chunk, p), in the
        model's dtype.

    Raises:
        InputError: empty data, targets not matching the inputs, or ``batch_size`` < 1.

    """
    check_data(inputs, targets, batch_size)
    theta = theta.detach()

    def one(t: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return example_loss(model(t, x.unsqueeze(0)), y.unsqueeze(0))[0]

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    for s in example_chunks(inputs.shape[0], batch_size):
        yield s, per_example(theta, inputs[s], targets[s]).detach()


def gradient_attributions(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    directions: Tensor,
    batch_size: int | None = None,
) -> Tensor:
    """<g_i, d_k> from explicit per-example gradients: shape (N, K), float64.

    With the trait directions v_k this is the exact attribution c_ik (the jvp screen's); with
    w_k = P^T P v_k (:func:`projected_directions`) it is the projected one. Stack several sets
    of directions to score them all from one pass of per-example gradients.

    Returns:
        The attributions, shape (N, K), float64.

    Raises:
        InputError: empty data, mismatched targets, directions not (K, P) or not finite.

    """
    check_directions(model, directions)
    tangents = directions.detach().double().cpu()
    out = torch.empty(inputs.shape[0], directions.shape[0], dtype=torch.float64)
    for s, gradients in per_example_gradients(
        model, theta, inputs, targets, example_loss, batch_size
    ):
        out[s] = gradients.double().cpu() @ tangents.T
    return out


def projected_attributions(
    model: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    example_loss: ExampleLoss,
    directions: Tensor,
    dim: int,
    seed: int,
    kind: str = "gaussian",
    batch_size: int | None = None,
) -> Tensor:
    """c~_ik = <P g_i, P v_k> as projection tools compute it: shape (N, K), float64.

    Per chunk of examples, the per-example gradients are projected (streamed over the blocks of
    P) and scored against the projected directions P v_k.

    Returns:
        The projected attributions, shape (N, K), float64.

    Raises:
        InputError: as :func:`gradient_attributions`, or a bad dim, kind or seed.

    """
    check_directions(model, directions)
    projected = project(directions, dim, seed, kind)
    out = torch.empty(inputs.shape[0], directions.shape[0], dtype=torch.float64)
    for s, gradients in per_example_gradients(
        model, theta, inputs, targets, example_loss, batch_size
    ):
        out[s] = project(gradients, dim, seed, kind) @ projected.T
    return out


def projection_variance(g: Tensor, v: Tensor, dim: int, kind: str = "gaussian") -> Tensor:
    """Var <P g, P v> for fixed g, v (rows broadcast): the JL error model of the module docstring.

    Returns:
        (|g|^2 |v|^2 + <g, v>^2 [- 2 sum_j g_j^2 v_j^2 for rademacher]) / dim, float64.

    Raises:
        InputError: an unknown kind or dim < 1.

    """
    _check(dim, kind, 0)
    g, v = g.double(), v.double()
    value = (g * g).sum(-1) * (v * v).sum(-1) + (g * v).sum(-1) ** 2
    if kind == "rademacher":
        value = value - 2 * (g * g * v * v).sum(-1)
    return value / dim
