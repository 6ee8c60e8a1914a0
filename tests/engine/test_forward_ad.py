"""Nested forward mode through normalization layers, against references computed without the fix.

References never run inside ``explicit_normalization``: the fused torch kernels' first-order jvp
(which is correct) differenced by a fourth-order central scheme in s, and reverse-over-reverse of
the fused kernels. The values of the elementary-ops replacements are compared with the fused
``F.layer_norm`` / ``F.instance_norm`` / ``nn.LayerNorm`` outside the mode.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev, jvp

from sublim_theory.engine.forward_ad import explicit_normalization
from sublim_theory.testing.asserts import assert_allclose

ROUNDOFF = torch.finfo(torch.float64).eps / 2
STEP = 2e-4  # finite-difference step in s: truncation ~ STEP^4, rounding ~ ROUNDOFF / STEP

NORMS = {
    "layer_norm": lambda a: F.layer_norm(
        a, (3, 3), torch.linspace(0.5, 2, 9).reshape(3, 3).double(), None, 1e-3
    ),
    "nn.LayerNorm": torch.nn.LayerNorm(3).double(),
    "instance_norm": lambda a: F.instance_norm(
        a, weight=torch.linspace(0.5, 2, 4).double(), bias=torch.ones(4).double()
    ),
}


def _point_and_direction():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return x, t


def _first_derivative(f, x, t, s):
    """d/ds f(x + s t) at s by one (correct) forward-mode jvp of the fused kernel."""
    return jvp(f, (x + s * t,), (t,))[1]


def _forward_over_forward(f, x, t):
    one, zero = torch.ones((), dtype=x.dtype), torch.zeros((), dtype=x.dtype)
    return jvp(lambda s: _first_derivative(f, x, t, s), (zero,), (one,))[1]


def _finite_difference_reference(f, x, t):
    """d^2/ds^2 f(x + s t) at 0 by a 4th-order central difference of the fused first jvp.

    Returns (estimate, error bound). The truncation error of the step-h scheme is ~h^4 f^(5),
    so |D(h) - D(2h)| (~15x the truncation error of D(h)) bounds it; rounding adds
    ~ (18/12) u max|f'| / h. Nothing here runs inside ``explicit_normalization``.
    """

    def scheme(h):
        g = {k: _first_derivative(f, x, t, k * h) for k in (-2, -1, 1, 2)}
        return (-g[2] + 8 * g[1] - 8 * g[-1] + g[-2]) / (12 * h)

    estimate = scheme(STEP)
    truncation = float((estimate - scheme(2 * STEP)).detach().abs().max())
    scale = float(_first_derivative(f, x, t, 0.0).detach().abs().max())
    return estimate, truncation + 10 * ROUNDOFF * scale / STEP


def _reverse_over_reverse(f, x, t):
    zero = torch.zeros((), dtype=x.dtype)
    return jacrev(jacrev(lambda s: f(x + s * t)))(zero)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_explicit_normalization_values_equal_the_fused_kernels(name):
    x, _ = _point_and_direction()
    fused = NORMS[name](x)
    with explicit_normalization():
        explicit = NORMS[name](x)
    # a few elementary ops per entry on O(1) values: float64 rounding, entrywise
    assert_allclose(explicit, fused, f"{name}: elementary ops vs torch", rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_explicit_normalization_second_derivative_matches_finite_differences(name):
    x, t = _point_and_direction()
    reference, bound = _finite_difference_reference(NORMS[name], x, t)
    with explicit_normalization():
        forward = _forward_over_forward(NORMS[name], x, t)
    error = float((forward - reference).detach().abs().max())
    assert error <= bound, f"{name}: |fwd-over-fwd - FD| = {error:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("name", sorted(NORMS))
def test_fused_reverse_over_reverse_matches_finite_differences(name):
    """The fused kernels' reverse-over-reverse is right: it is an independent second reference."""
    x, t = _point_and_direction()
    reference, bound = _finite_difference_reference(NORMS[name], x, t)
    error = float((_reverse_over_reverse(NORMS[name], x, t) - reference).detach().abs().max())
    assert error <= bound, f"{name}: |rev-over-rev - FD| = {error:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("name", sorted(NORMS))
def test_torch_fused_nested_jvp_is_still_wrong(name):
    """Pins the upstream bug the mode works around: fails once torch fixes fwd-over-fwd.

    Then ``explicit_normalization`` can be dropped (see sublim_theory/engine/forward_ad.py).
    """
    x, t = _point_and_direction()
    reference, bound = _finite_difference_reference(NORMS[name], x, t)
    error = float((_forward_over_forward(NORMS[name], x, t) - reference).detach().abs().max())
    assert error > 1e3 * bound, f"{name}: fused fwd-over-fwd is now within {error:.3g} of FD"
