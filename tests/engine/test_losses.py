"""Each loss's closed forms against autograd of its own value; M is PSD; subsets; bad input."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sublim_theory.engine.losses import KLDivergence, SoftCrossEntropy, SquaredError, make_loss
from sublim_theory.errors import InputError
from sublim_theory.testing.asserts import assert_allclose
from sublim_theory.testing.reference import explicit_output_hessian, explicit_target_curvature

LOSS_FACTORIES = {
    "squared": lambda subset: SquaredError(scale=0.7, outputs=subset),
    "softmax_ce": lambda subset: SoftCrossEntropy(outputs=subset),
    "kl": lambda subset: KLDivergence(temperature=1.7, outputs=subset),
}


def _random(shape, seed, scale=2.0):
    return scale * torch.randn(
        shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("name", sorted(LOSS_FACTORIES))
@pytest.mark.parametrize("subset", [None, [1, 3], [4, 0, 2]])
def test_closed_forms_match_autograd(name, subset):
    loss = LOSS_FACTORIES[name](subset)
    z0, u, z = _random((4, 5), 0), _random((4, 5), 1), _random((4, 5), 2)

    grad = torch.func.vmap(torch.func.grad(loss.value))(z, z0)
    assert_allclose(loss.output_gradient(z, z0), grad, "grad_z l")

    hessians = explicit_output_hessian(loss, z0)
    assert_allclose(
        loss.hessian_vector_product(z0, u), torch.einsum("nij,nj->ni", hessians, u), "M u"
    )

    curvature = torch.stack([explicit_target_curvature(loss, a, b) for a, b in zip(z0, u)])
    assert_allclose(loss.target_curvature(z0, u), curvature, "G[u,u]")


@pytest.mark.parametrize("name", sorted(LOSS_FACTORIES))
def test_target_derivative_of_gradient_is_minus_hessian(name):
    """The lemma's identity d/dy grad_z l(z, y)|_{z=y} = -M, by forward mode in y."""
    loss = LOSS_FACTORIES[name](None)
    z0, u = _random((3, 4), 5), _random((3, 4), 6)
    _, derivative = torch.func.jvp(lambda y: loss.output_gradient(z0, y), (z0,), (u,))
    assert_allclose(derivative, -loss.hessian_vector_product(z0, u), "d/dy grad_z l")


@given(
    name=st.sampled_from(sorted(LOSS_FACTORIES)),
    k=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    scale=st.floats(0.01, 30.0),
)
def test_output_hessian_is_psd(name, k, seed, scale):
    loss = LOSS_FACTORIES[name](None)
    z0, u = _random((6, k), seed, scale), _random((6, k), seed + 1, scale)
    quadratic = (u * loss.hessian_vector_product(z0, u)).sum(-1)
    bound = 1e-12 * (u**2).sum(-1) * max(1.0, loss.scale if name == "squared" else 1.0)
    assert (quadratic >= -bound).all(), quadratic


def test_softmax_variance_identity():
    z0, u = _random((5, 6), 3), _random((5, 6), 4)
    p = torch.softmax(z0, -1)
    variance = (p * (u - (p * u).sum(-1, keepdim=True)) ** 2).sum(-1)
    quadratic = (u * SoftCrossEntropy().hessian_vector_product(z0, u)).sum(-1)
    assert_allclose(quadratic, variance, "u^T M u = Var_p(u)")


@pytest.mark.parametrize("loss", [SoftCrossEntropy(outputs=[2]), KLDivergence(2.0, outputs=[0])])
def test_one_softmax_output_has_zero_curvature_and_gradient(loss):
    z0, u, y = _random((3, 4), 0), _random((3, 4), 1), _random((3, 4), 2)
    assert torch.equal(loss.hessian_vector_product(z0, u), torch.zeros_like(u))
    assert torch.equal(loss.output_gradient(z0, y), torch.zeros_like(y))


def test_subset_zero_outside_and_mse_scale():
    loss = SquaredError(outputs=[1])
    z, y = _random((2, 3), 0), _random((2, 3), 1)
    g = loss.output_gradient(z, y)
    assert torch.equal(g[:, [0, 2]], torch.zeros(2, 2, dtype=torch.float64))
    # torch MSELoss(mean) over k outputs is c = 2/k
    mse = torch.nn.functional.mse_loss(z[0], y[0])
    assert torch.isclose(SquaredError(scale=2 / 3).value(z[0], y[0]), mse)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: make_loss("hinge"), "unknown loss 'hinge'"),
        (lambda: make_loss("kl", temperature=0.0), "temperature"),
        (lambda: make_loss("squared", scale=-1.0), "scale"),
        (lambda: make_loss("softmax_ce", temperature=2.0), "takes no option"),
        (lambda: SoftCrossEntropy(outputs=[]), "empty"),
        (lambda: SoftCrossEntropy(outputs=[1, 1]), "repeats"),
    ],
)
def test_bad_loss_construction(build, message):
    with pytest.raises(InputError, match=message):
        build()


def test_bad_loss_use():
    with pytest.raises(InputError, match="outside the model's 3 outputs"):
        SoftCrossEntropy(outputs=[5]).value(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(InputError, match="differ in shape"):
        SoftCrossEntropy().value(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("outputs", [[-1], [10, -3], [1.5], [True]])
def test_output_subsets_name_outputs_by_non_negative_integers(outputs):
    # -1 used to alias output k-1 silently (index 12 of 13)
    with pytest.raises(InputError, match="output subset"):
        make_loss("kl", outputs=outputs)
