"""engine.optimizers.make_optimizer: the one name -> torch optimizer table of the training loops."""

import pytest
import torch

from sublim_theory.engine.optimizers import OPTIMIZERS, SignSGD, make_optimizer
from sublim_theory.errors import InputError


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_name_builds_its_optimizer_with_lr_and_decay(name):
    theta = torch.zeros(3, requires_grad=True)
    optimizer = make_optimizer(name, iter([theta]), 0.5, 0.25)
    assert type(optimizer) is OPTIMIZERS[name]
    group = optimizer.param_groups[0]
    assert group["params"] == [theta] and group["lr"] == 0.5 and group["weight_decay"] == 0.25


def test_first_steps_are_the_rules_steps():
    # one step from theta = 1 with gradient g: sgd -lr (g + wd theta); signsgd -lr sign(.);
    # adam's first step is -lr sign(.) up to eps (torch.optim.Adam, fresh state)
    g, lr, wd = torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64), 0.1, 0.5
    moved = {}
    for name in OPTIMIZERS:
        theta = torch.ones(3, dtype=torch.float64, requires_grad=True)
        optimizer = make_optimizer(name, [theta], lr, wd, fused=name == "adam")
        theta.grad = g.clone()
        optimizer.step()
        moved[name] = theta.detach() - 1
    direction = g + wd
    torch.testing.assert_close(moved["sgd"], -lr * direction, rtol=0, atol=1e-15)
    torch.testing.assert_close(moved["signsgd"], -lr * direction.sign(), rtol=0, atol=1e-15)
    torch.testing.assert_close(moved["adam"], -lr * direction.sign(), rtol=1e-6, atol=1e-15)
    assert OPTIMIZERS["signsgd"] is SignSGD


def test_an_unknown_name_is_one_line():
    with pytest.raises(InputError, match="one of"):
        make_optimizer("lion", [torch.zeros(1, requires_grad=True)], 0.1)
