"""Projected attributions: the exact path against explicit per-example gradients, the two projected
paths against each other, and the projection's error against the JL model (unbiased, variance
(|g|^2|v|^2 + <g,v>^2)/d, so the error shrinks like d^{-1/2}), all in float64 on a tiny LM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import grad

from sublim_theory.engine import projection as J
from sublim_theory.engine import screen as S
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import TinyTransformer
from sublim_theory.testing.asserts import loglog_slope

MASK = torch.tensor([False, True, True, True, False])


def token_loss(logits, targets):
    """Per-document mean cross-entropy on some positions (the number student's loss shape)."""
    picked = torch.log_softmax(logits[:, MASK], -1).gather(-1, targets[:, MASK, None])
    return -picked.squeeze(-1).mean(1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    net = TinyTransformer(11, 8, 2, 1, 6, pool="none").double().eval()
    model = FunctionalModel(net)
    docs = torch.randint(0, 11, (7, 6))
    directions = torch.randn(3, model.num_params, dtype=torch.float64)
    return model, model.flat_params(), docs[:, :-1], docs[:, 1:], directions


def explicit_gradients(model, theta, inputs, targets):
    rows = [
        grad(lambda t, i=i: token_loss(model(t, inputs[i : i + 1]), targets[i : i + 1])[0])(theta)
        for i in range(inputs.shape[0])
    ]
    return torch.stack(rows)


def test_exact_path_equals_explicit_per_example_gradients_and_the_jvp_screen(tiny):
    model, theta, inputs, targets, directions = tiny
    exact = J.gradient_attributions(model, theta, inputs, targets, token_loss, directions, 3)
    reference = explicit_gradients(model, theta, inputs, targets) @ directions.T
    scale = reference.abs().max()
    assert (exact - reference).abs().max() <= 1e-10 * scale
    jvp = S.example_attributions(model, theta, inputs, targets, token_loss, directions, 4)
    assert (exact - jvp).abs().max() <= 1e-10 * scale
    chunks = list(J.per_example_gradients(model, theta, inputs, targets, token_loss, 3))
    assert [c.stop - c.start for c, _ in chunks] == [3, 3, 1]  # never all examples at once


def test_both_projected_paths_equal_the_explicit_projection(tiny):
    model, theta, inputs, targets, directions = tiny
    p = model.num_params
    for kind in J.KINDS:
        matrix = J.projection_matrix(p, 32, 7, kind)
        assert matrix.shape == (32, p)
        gradients = explicit_gradients(model, theta, inputs, targets)
        reference = (gradients @ matrix.T) @ (directions @ matrix.T).T
        streamed = J.projected_attributions(
            model, theta, inputs, targets, token_loss, directions, 32, 7, kind, batch_size=2
        )
        back = J.gradient_attributions(
            model,
            theta,
            inputs,
            targets,
            token_loss,
            J.projected_directions(directions, 32, 7, kind),
        )
        scale = reference.abs().max()
        assert (streamed - reference).abs().max() <= 1e-10 * scale
        assert (back - reference).abs().max() <= 1e-10 * scale
        # the projection is not the identity: it changes the attributions
        exact = gradients @ directions.T
        assert (reference - exact).abs().max() > 1e-3 * exact.abs().max()


def test_a_block_of_p_depends_only_on_its_seed_and_index():
    small = J.projection_matrix(J.BLOCK + 5, 4, 3)
    large = J.projection_matrix(3 * J.BLOCK, 4, 3)
    assert torch.equal(small[:, : J.BLOCK], large[:, : J.BLOCK])
    assert not torch.equal(small, J.projection_matrix(J.BLOCK + 5, 4, 4))
    signs = J.projection_matrix(100, 9, 0, "rademacher") * 3
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def _errors(gradients, directions, dim, seeds, kind):
    """(projected - exact) / sd of the JL model, per seed and (i, k): shape (seeds, N, K)."""
    exact = gradients @ directions.T
    sd = J.projection_variance(gradients[:, None], directions[None], dim, kind).sqrt()
    out = []
    for seed in range(seeds):
        matrix = J.projection_matrix(gradients.shape[1], dim, seed, kind)
        out.append(((gradients @ matrix.T) @ (directions @ matrix.T).T - exact) / sd)
    return torch.stack(out)


@pytest.mark.parametrize("kind", J.KINDS)
def test_projection_error_follows_the_jl_model_and_shrinks_like_d_to_minus_half(tiny, kind):
    model, theta, inputs, targets, _ = tiny
    gradients = explicit_gradients(model, theta, inputs, targets)
    # trait directions with a real overlap with the gradients (<g, v> not negligible)
    directions = gradients[:3] + 0.5 * torch.randn(3, gradients.shape[1], dtype=torch.float64)
    seeds, dims = 60, (16, 64, 256, 1024)
    rms = []
    for dim in dims:
        z = _errors(gradients, directions, dim, seeds, kind)
        # E z^2 = 1 under the model; the mean over 60 seeds x 21 pairs (correlated within a
        # seed, so count 60 independent draws of a chi-square-like mean: sd ~ sqrt(2/60) = 0.18)
        assert 0.5 < float(z.square().mean()) < 1.6, (dim, float(z.square().mean()))
        exact = gradients @ directions.T
        error = z * J.projection_variance(gradients[:, None], directions[None], dim, kind).sqrt()
        rms.append(float(error.square().mean().sqrt() / exact.abs().mean()))
    slope = loglog_slope(dims, rms)
    assert abs(slope + 0.5) < 0.1, slope


def test_projection_is_unbiased_over_seeds(tiny):
    model, theta, inputs, targets, directions = tiny
    gradients = explicit_gradients(model, theta, inputs, targets)
    seeds = 300
    z = _errors(gradients, directions, 16, seeds, "gaussian")
    # each (i, k): mean over independent seeds of a unit-variance error, times sqrt(seeds) ~ N(0,1)
    t = z.mean(0) * math.sqrt(seeds)
    assert float(t.abs().max()) < 4.5  # 21 pairs: P(max |N(0,1)| > 4.5) < 21 * 7e-6
    # and the average of P^T P is the identity within its sampling error (sd sqrt(1/(d seeds)))
    mean = (
        sum(J.projection_matrix(40, 16, s).T @ J.projection_matrix(40, 16, s) for s in range(seeds))
        / seeds
    )
    off = mean - torch.eye(40, dtype=torch.float64)
    assert float(off.abs().max()) < 5 * math.sqrt(2 / (16 * seeds))


def test_large_d_recovers_the_exact_attributions(tiny):
    model, theta, inputs, targets, directions = tiny
    gradients = explicit_gradients(model, theta, inputs, targets)
    exact = gradients @ directions.T
    dim = 2**14
    projected = J.projected_attributions(
        model, theta, inputs, targets, token_loss, directions, dim, 11, batch_size=4
    )
    sd = J.projection_variance(gradients[:, None], directions[None], dim).sqrt()
    assert float(((projected - exact) / sd).abs().max()) < 5
    # relative to |g||v| the error is O(d^{-1/2}) = 0.8%: ranks of the attributions survive
    norms = gradients.norm(dim=1)[:, None] * directions.norm(dim=1)[None]
    assert float(((projected - exact) / norms).abs().max()) < 5 * math.sqrt(2 / dim)


def test_bad_projection_settings_are_refused(tiny):
    model, theta, inputs, targets, directions = tiny
    with pytest.raises(InputError, match="dimension"):
        J.projected_directions(directions, 0, 0)
    with pytest.raises(InputError, match="kind"):
        J.projected_directions(directions, 4, 0, "orthogonal")
    with pytest.raises(InputError, match="seed"):
        J.projected_directions(directions, 4, -1)
    with pytest.raises(InputError, match="directions"):
        J.gradient_attributions(model, theta, inputs, targets, token_loss, directions[:, :5])
    np.testing.assert_allclose(
        float(J.projection_variance(torch.ones(4), torch.ones(4), 2)), (16 + 16) / 2
    )
