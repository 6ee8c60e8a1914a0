"""A module wrapped in eval mode and switched to train() afterwards is refused at every call.

Dropout in train mode makes two identical calls differ; BatchNorm in train mode rewrites its
running statistics. The engine must refuse both before the module runs, and leave the
module's mode and buffers exactly as the user set them.
"""

import pytest
import torch
from torch import nn

from sublim_theory.engine.alignment import (
    first_order_coefficient,
    gauss_newton_product,
    student_update,
    taylor_coefficients,
)
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.losses import SoftCrossEntropy
from sublim_theory.errors import InputError


def _module(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), layer, nn.Tanh(), nn.Linear(4, 2)).double().eval()


LAYERS = [(lambda: nn.BatchNorm1d(4), "BatchNorm"), (lambda: nn.Dropout(0.5), "Dropout")]

# every public entry that evaluates the network: the direct call, as_function, and the engine
CALLS = {
    "call": lambda model, theta, x, v: model(theta, x),
    "as_function": lambda model, theta, x, v: model.as_function(x)(theta),
    "gauss_newton_product": lambda model, theta, x, v: gauss_newton_product(
        model, theta, x, SoftCrossEntropy(), v
    ),
    "first_order_coefficient": lambda model, theta, x, v: first_order_coefficient(
        model, theta, x, SoftCrossEntropy(), v
    ),
    "taylor_coefficients": lambda model, theta, x, v: taylor_coefficients(
        model, theta, x, SoftCrossEntropy(), v
    ),
    "student_update": lambda model, theta, x, v: student_update(
        model, theta, x, torch.zeros(x.shape[0], 2, dtype=torch.float64), SoftCrossEntropy()
    ),
}


@pytest.mark.parametrize("make_layer, kind", LAYERS)
@pytest.mark.parametrize("entry", sorted(CALLS))
def test_switch_to_train_after_wrapping_is_refused_and_nothing_changes(make_layer, kind, entry):
    module = _module(make_layer())
    model = FunctionalModel(module)  # eval mode: accepted
    theta = model.flat_params()
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = CALLS[entry](model, theta, x, v)
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    module.train()
    with pytest.raises(InputError, match=f"{kind} in train mode.*model.eval()"):
        CALLS[entry](model, theta, x, v)
    # the user's module is left as they set it: still in train mode, buffers untouched
    assert all(sub.training for sub in module.modules())
    for name, b in module.named_buffers():
        assert torch.equal(b, buffers[name]), name
    module.eval()  # back in eval mode the same call gives the same answer
    after = CALLS[entry](model, theta, x, v)
    if isinstance(before, torch.Tensor):
        assert torch.equal(before, after)
    else:
        assert before == after


def test_as_function_made_in_eval_mode_is_checked_at_each_evaluation():
    module = _module(nn.Dropout(0.5))
    model = FunctionalModel(module)
    x = torch.randn(4, 3, dtype=torch.float64)
    f = model.as_function(x)
    theta = model.flat_params()
    assert torch.equal(f(theta), f(theta))
    module.train()
    with pytest.raises(InputError, match="Dropout in train mode"):
        f(theta)
