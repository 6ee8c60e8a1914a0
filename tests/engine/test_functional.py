import pytest
import torch
from torch import nn

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def test_flatten_roundtrip_and_call_matches_module():
    module = _net()
    model = FunctionalModel(module)
    theta = model.flat_params()
    assert theta.shape == (3 * 4 + 4 + 4 * 2 + 2,)  # 26
    assert torch.equal(model.flatten(model.unflatten(theta)), theta)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(model(theta, x), module(x))
    model.load(theta * 2)
    assert torch.equal(model.flat_params(), theta * 2)


def test_frozen_parameters_are_not_part_of_theta():
    module = _net()
    module[0].weight.requires_grad_(False)
    model = FunctionalModel(module)
    assert model.names == ["0.bias", "2.weight", "2.bias"]
    x = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(model(model.flat_params(), x), module(x))


@pytest.mark.parametrize(
    "layer, kind",
    [(nn.BatchNorm1d(4), "BatchNorm"), (nn.Dropout(0.1), "Dropout")],
)
def test_train_mode_batchnorm_and_dropout_are_refused(layer, kind):
    module = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 2))
    with pytest.raises(InputError, match=f"{kind} in train mode.*model.eval()"):
        FunctionalModel(module.train())
    FunctionalModel(module.eval())  # eval mode is a deterministic function: accepted


def test_bad_modules_and_vectors():
    with pytest.raises(InputError, match="expected a torch.nn.Module"):
        FunctionalModel(lambda x: x)
    with pytest.raises(InputError, match="no trainable parameters"):
        FunctionalModel(nn.ReLU())
    with pytest.raises(InputError, match="share one dtype"):
        FunctionalModel(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double()))
    model = FunctionalModel(_net())
    with pytest.raises(InputError, match=r"expected \(26,\)"):
        model.unflatten(torch.zeros(29, dtype=torch.float64))
    with pytest.raises(InputError, match="lacks"):
        model.flatten({"0.weight": torch.zeros(4, 3)})
