"""Tied and reused parameters: an embedding tied to the output head, and a block applied twice.

The oracle is the same network written as a pure function of one flat vector (no modules, no
``functional_call``, no weight tying machinery), differentiated with ``jacrev``/``grad``: the
engine must see the tied weight as ONE parameter whose derivative sums both uses.
"""

import torch
from torch import Tensor, nn
from torch.func import grad

from sublim_theory.engine.alignment import (
    distillation_targets,
    gauss_newton_product,
    student_update,
    taylor_coefficients,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import KLDivergence, SquaredError
from sublim_theory.testing import reference
from sublim_theory.testing.asserts import (
    ROUNDING_STEPS,
    assert_allclose,
    assert_within_rounding,
    taylor_rounding_scales,
    unit_roundoff,
    update_rounding_scales,
)

VOCAB, WIDTH, SEQ = 6, 3, 4
# outputs are O(1) sums of a few O(1) products: module and pure function differ by rounding only
TINY = ROUNDING_STEPS * unit_roundoff(torch.float64)


class TiedLanguageModel(nn.Module):
    """tokens -> embedding E -> tanh(W h + b) applied twice (one block) -> logits h E^T."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.block = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        if tie:
            self.head.weight = self.embed.weight
        self.double()

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        for _ in range(2):  # the same block, reused
            h = torch.tanh(self.block(h))
        return self.head(h)


class PureTiedModel:
    """The same network as an explicit function of theta = [E, W, b] (the oracle's view)."""

    sizes = (VOCAB * WIDTH, WIDTH * WIDTH, WIDTH)

    def __call__(self, theta: Tensor, tokens: Tensor) -> Tensor:
        e, w, b = torch.split(theta, self.sizes)
        e, w = e.reshape(VOCAB, WIDTH), w.reshape(WIDTH, WIDTH)
        h = e[tokens]
        for _ in range(2):
            h = torch.tanh(h @ w.T + b)
        return h @ e.T

    def as_function(self, tokens: Tensor):
        return lambda theta: self(theta, tokens)


def _setup():
    model = FunctionalModel(TiedLanguageModel())
    assert model.names == ["embed.weight", "block.weight", "block.bias"]
    tokens = torch.randint(0, VOCAB, (5, SEQ), generator=torch.Generator().manual_seed(1))
    theta0 = model.flat_params()
    v = torch.randn(theta0.numel(), dtype=theta0.dtype, generator=torch.Generator().manual_seed(2))
    return model, PureTiedModel(), tokens, theta0, v


def test_the_pure_function_is_the_module():
    model, pure, tokens, theta0, v = _setup()
    assert_allclose(model(theta0, tokens), pure(theta0, tokens), "f(theta0)", rtol=0, atol=TINY)
    assert_allclose(
        model(theta0 + v, tokens), pure(theta0 + v, tokens), "f(theta0 + v)", rtol=0, atol=0
    )


def test_gauss_newton_product_and_coefficients_match_the_flat_oracle():
    model, pure, tokens, theta0, v = _setup()
    loss = KLDivergence(temperature=1.5)
    dense = reference.explicit_gauss_newton(pure, theta0, tokens, loss)
    product = gauss_newton_product(model, theta0, tokens, loss, v)
    error = float(torch.linalg.vector_norm(product - dense @ v))
    scale = float(torch.trace(dense)) * float(torch.linalg.vector_norm(v))
    assert_within_rounding(error, 0.0, scale, "||K v - K_flat v|| (tied)")

    a, b = taylor_coefficients(model, theta0, tokens, loss, v)
    a_ref, b_ref = reference.alignment_derivatives(pure, theta0, tokens, loss, v)
    scale_a, scale_b = taylor_rounding_scales(model, theta0, tokens, loss, v)
    assert_within_rounding(a, a_ref, scale_a, "A (tied)")
    assert_within_rounding(b, b_ref, scale_b, "B (tied)")


def test_exact_update_matches_the_gradient_of_the_flat_objective():
    model, pure, tokens, theta0, v = _setup()
    loss, eps = SquaredError(scale=0.5), 1e-2
    targets = distillation_targets(model, theta0 + eps * v, tokens)
    update = student_update(model, theta0, tokens, targets, loss)
    expected = -grad(lambda t: loss.value(pure(t, tokens), pure(theta0 + eps * v, tokens)).mean())(
        theta0
    )
    scale_update, _ = update_rounding_scales(model, theta0, tokens, loss)
    error = float(torch.linalg.vector_norm(update - expected))
    assert_within_rounding(error, 0.0, scale_update, "||dtheta_S - flat gradient|| (tied)")
