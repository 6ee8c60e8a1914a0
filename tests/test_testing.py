import pytest
import torch

from sublim_theory.architectures import build_model, make_inputs
from sublim_theory.functional import FunctionalModel
from sublim_theory.losses import SoftCrossEntropy
from sublim_theory.testing import assert_alignment_bound, assert_allclose, loglog_slope


def test_assert_allclose_reports_the_failing_entries():
    expected = torch.zeros(5, dtype=torch.float64)
    actual = expected.clone()
    actual[3] = 1e-6
    with pytest.raises(AssertionError, match=r"1/5 entries differ.*\[3\] 1e-06 vs 0"):
        assert_allclose(actual, expected, "x")
    assert_allclose(actual, expected, "x", atol=1e-5)


def test_loglog_slope_recovers_a_power():
    xs = [0.1, 0.05, 0.025]
    assert abs(loglog_slope(xs, [3 * x**2.5 for x in xs]) - 2.5) < 1e-12


def test_alignment_bound_fails_when_the_direction_is_flipped_in_the_update():
    """The bound is a real assertion: a loss whose curvature has the wrong sign is caught."""

    class Anti(SoftCrossEntropy):
        def _hvp(self, z0, u):
            return -super()._hvp(z0, u)

        def _gradient(self, z, y):
            return -super()._gradient(z, y)

        def _value(self, z, y):
            return -super()._value(z, y)

    model = FunctionalModel(build_model("mlp", 4, width=5))
    inputs = make_inputs("mlp", 6)
    v = torch.randn(
        model.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert assert_alignment_bound(model, v, inputs, SoftCrossEntropy()) > 0
    with pytest.raises(AssertionError, match="not PSD"):
        assert_alignment_bound(model, v, inputs, Anti())
