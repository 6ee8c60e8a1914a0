"""Symbolic <-> numeric: lambdified A, B, K on the tanh MLP equal the torch.func engine in float64."""

import numpy as np
import pytest
import torch
from torch import nn

from sublim_theory.engine.alignment import (
    first_order_coefficient,
    gauss_newton_product,
    second_order_coefficient,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import make_loss
from sublim_theory.symbolic import lambdified_coefficients

RELATIVE = 1e-9
LOSSES = [("squared", {"scale": 1.0}), ("softmax_ce", {}), ("kl", {"temperature": 2.0})]


def relative_error(symbolic, numeric):
    symbolic, numeric = np.asarray(symbolic, dtype=float), np.asarray(numeric, dtype=float)
    return float(np.linalg.norm(symbolic - numeric) / max(np.linalg.norm(numeric), 1e-300))


def tanh_mlp(seed):
    torch.manual_seed(seed)
    return FunctionalModel(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 3)).double())


@pytest.mark.parametrize("loss_name,options", LOSSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_first_and_second_order_coefficients_agree(loss_name, options, seed):
    model = tanh_mlp(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    theta = model.flat_params() + 0.5 * torch.randn(15, generator=generator, dtype=torch.float64)
    v = torch.randn(15, generator=generator, dtype=torch.float64)
    inputs = torch.randn(7, 2, generator=generator, dtype=torch.float64)
    loss = make_loss(loss_name, **options)
    symbolic = lambdified_coefficients(loss_name, options.get("temperature", 1.0))
    a_symbolic, b_symbolic, _ = symbolic.mean_over_inputs(theta.numpy(), inputs.numpy(), v.numpy())
    a_numeric = first_order_coefficient(model, theta, inputs, loss, v)
    b_numeric = second_order_coefficient(model, theta, inputs, loss, v)
    assert relative_error(a_symbolic, a_numeric) < RELATIVE
    assert relative_error(b_symbolic, b_numeric) < RELATIVE


@pytest.mark.parametrize("loss_name,options", LOSSES)
def test_mismatch_prediction_agrees(loss_name, options):
    """K (eps v - delta d) and its alignment <., v>: the init-distance law's prediction."""
    model = tanh_mlp(3)
    generator = torch.Generator().manual_seed(7)
    theta = model.flat_params()
    v, d = (torch.randn(15, generator=generator, dtype=torch.float64) for _ in range(2))
    inputs = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    eps, delta = 1e-3, 2e-3
    loss = make_loss(loss_name, **options)
    symbolic = lambdified_coefficients(loss_name, options.get("temperature", 1.0))
    _, _, gauss_newton = symbolic.mean_over_inputs(theta.numpy(), inputs.numpy(), v.numpy())
    offset = (eps * v - delta * d).numpy()
    predicted_symbolic = gauss_newton @ offset
    predicted_numeric = gauss_newton_product(model, theta, inputs, loss, eps * v - delta * d)
    assert relative_error(predicted_symbolic, predicted_numeric.numpy()) < RELATIVE
    assert np.allclose(gauss_newton, gauss_newton.T, rtol=0, atol=1e-12)
    alignment_symbolic = float(predicted_symbolic @ v.numpy())
    alignment_numeric = float(predicted_numeric @ v)
    scale = np.linalg.norm(predicted_symbolic) * float(v.norm())
    assert abs(alignment_symbolic - alignment_numeric) < RELATIVE * scale
