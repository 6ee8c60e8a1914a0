import pytest
import torch
from torch.func import jvp

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import (
    ARCHITECTURES,
    TinyTransformer,
    build_model,
    make_inputs,
)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_architecture_runs_forward_mode(arch, dtype):
    model = FunctionalModel(build_model(arch, 7, width=6, depth=2, dtype=dtype))
    inputs = make_inputs(arch, 3, dtype=dtype)
    theta = model.flat_params()
    z, u = jvp(model.as_function(inputs), (theta,), (torch.ones_like(theta),))
    assert z.shape == (3, 7) and u.shape == (3, 7)
    assert z.dtype == dtype and torch.isfinite(u).all()
    assert not model.module.training


def test_transformer_is_causal_and_can_return_every_position():
    model = TinyTransformer(vocab_size=9, d_model=8, n_heads=2, n_layers=1, max_len=5, pool="none")
    tokens = torch.randint(0, 9, (2, 5))
    out = model(tokens)
    assert out.shape == (2, 5, 9)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 9
    assert torch.allclose(model(changed)[:, :-1], out[:, :-1])  # the future does not leak back


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_model("rnn"), "unknown architecture 'rnn'"),
        (lambda: build_model("mlp", activation="swish"), "unknown activation 'swish'"),
        (lambda: build_model("mlp", width=0), "hidden width must be a positive integer"),
        (
            lambda: build_model("transformer", width=5, depth=1).forward(torch.zeros(2, 3)),
            "integer tokens",
        ),
        (
            lambda: build_model("transformer", seq_len=4)(torch.zeros(1, 9, dtype=torch.long)),
            "max_len",
        ),
        (lambda: make_inputs("mlp", 3, distribution="cauchy"), "unknown input distribution"),
        (lambda: TinyTransformer(10, d_model=6, n_heads=4), "divisible"),
    ],
)
def test_bad_architecture_arguments(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_build_model_takes_no_input_size_it_would_ignore():
    # the CNN pools globally: image size belongs to make_inputs, not to the model
    with pytest.raises(TypeError):
        build_model("cnn", 10, image_size=28)
    model = build_model("cnn", 10, width=4, depth=2)
    for size in (5, 28):
        assert model(make_inputs("cnn", 2, image_size=size)).shape == (2, 10)
