import pytest
import torch

from sublim_theory.engine.alignment import taylor_coefficients
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import SoftCrossEntropy, SquaredError
from sublim_theory.models.architectures import build_model, make_inputs
from sublim_theory.testing.asserts import assert_alignment_bound, assert_allclose, loglog_slope


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


def _problem(seed):
    model = FunctionalModel(build_model("mlp", 4, width=5, seed=seed))
    inputs = make_inputs("mlp", 6, seed=seed + 1)
    v = torch.randn(
        model.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    return model, v, inputs


def test_alignment_bound_fails_beyond_the_small_eps_regime():
    """A real problem where the theorem's small-eps condition is violated: B > 0 so eps* = inf and
    the check steps to max_eps = 10, where higher orders turn the exact alignment negative."""
    model, v, inputs = _problem(5)
    loss = SquaredError()
    v = -v  # the sign with B > 0 (B is odd in v)
    assert taylor_coefficients(model, model.flat_params(), inputs, loss, v)[1] > 0
    assert assert_alignment_bound(model, v, inputs, loss) > 0  # at the default eps <= 1e-3
    with pytest.raises(
        AssertionError,
        match=r"exact <dtheta_S, v> = -\d\.\d+e\+00 <= 0 at eps = 1\.000e\+01 \(A = ",
    ):
        assert_alignment_bound(model, v, inputs, loss, max_eps=10.0)


def test_alignment_bound_catches_an_update_that_disagrees_with_its_curvature():
    """Mismatched setup: M (used for A) is the soft cross-entropy's, but the loss the student
    descends is its negative, so the exact update moves away from the teacher."""

    class Ascending(SoftCrossEntropy):
        def _value(self, z, y):
            return -super()._value(z, y)

    model, v, inputs = _problem(0)
    with pytest.raises(AssertionError, match=r"exact <dtheta_S, v> = -.* <= 0 at eps = .*A = \d"):
        assert_alignment_bound(model, v, inputs, Ascending())


def test_alignment_bound_with_zero_curvature_requires_zero_alignment():
    """A = 0 claimed (M = 0) while the update is not zero: the A = 0 branch catches it."""

    class Flat(SoftCrossEntropy):
        def _hvp(self, z0, u):
            return torch.zeros_like(u)

        def _curvature(self, z0, u):
            return torch.zeros_like(u)

    model, v, inputs = _problem(0)
    assert assert_alignment_bound(model, v, inputs, SoftCrossEntropy(outputs=[2])) == 0.0
    with pytest.raises(AssertionError, match="A = 0 but the exact alignment is"):
        assert_alignment_bound(model, v, inputs, Flat())
