"""Nested forward mode against reverse-over-reverse, with and without the normalization fix."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacfwd, jacrev

from sublim_theory.forward_ad import explicit_normalization
from sublim_theory.testing import assert_allclose


def _second_derivatives(f, x, t):
    def along(s):
        return f(x + s * t)

    zero = torch.zeros((), dtype=x.dtype)
    return jacfwd(jacfwd(along))(zero), jacrev(jacrev(along))(zero)


NORMS = {
    "layer_norm": lambda a: F.layer_norm(
        a, (3, 3), torch.linspace(0.5, 2, 9).reshape(3, 3).double(), None, 1e-3
    ),
    "nn.LayerNorm": torch.nn.LayerNorm(3).double(),
    "instance_norm": lambda a: F.instance_norm(
        a, weight=torch.ones(4).double() * 2, bias=torch.ones(4).double()
    ),
}


@pytest.mark.parametrize("name", sorted(NORMS))
def test_explicit_normalization_gives_exact_second_derivative(name):
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = NORMS[name]
    with explicit_normalization():
        forward, reverse = _second_derivatives(f, x, t)
        assert_allclose(f(x), f(x) if not callable(f) else NORMS[name](x), "value")
    assert_allclose(forward, reverse, f"{name}: d^2/ds^2 by forward-over-forward")
    with explicit_normalization():
        patched_value = f(x)
    assert_allclose(patched_value, f(x), f"{name}: value unchanged by the mode")


def test_torch_fused_layer_norm_second_derivative_is_still_wrong():
    """Documents the upstream bug the mode works around; if this starts failing, torch fixed it."""
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward, reverse = _second_derivatives(lambda a: F.layer_norm(a, (5,)), x, t)
    assert (forward - reverse).abs().max() > 1e-3 * reverse.abs().max()
