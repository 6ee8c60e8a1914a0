"""LoRA via peft: the adapted network is W0 + (alpha / r) B A written out; it starts as the base
network (B0 = 0); only adapters train; seeds and redraws change A0, not the function; bad input
is an InputError."""

import pytest
import torch
from torch import nn

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import adapter_names, add_lora, linear_layers, redraw_adapters
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import build_model, make_inputs


def base_network():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


def written_out(base, adapted, x, scale):
    params = dict(adapted.named_parameters())
    h = x
    for index in (0, 2):
        a = params[f"{index}.lora_A.default.weight"]
        b = params[f"{index}.lora_B.default.weight"]
        weight = base[index].weight + scale * b @ a
        h = h @ weight.T + base[index].bias
        h = torch.tanh(h) if index == 0 else h
    return h


@pytest.mark.parametrize("rank,alpha", [(1, None), (3, 12.0)])
def test_adapted_network_is_the_written_out_product(rank, alpha):
    base = base_network()
    adapted = add_lora(base, rank, alpha=alpha, seed=2)
    x = make_inputs("mlp", 5, in_features=4, seed=1)
    with torch.no_grad():
        assert torch.equal(adapted(x), base(x))  # B0 = 0: the base network exactly
        for name in adapter_names(adapted):
            if "lora_B" in name:
                nn.init.normal_(dict(adapted.named_parameters())[name])
        scale = (rank if alpha is None else alpha) / rank
        # one matmul order differs: a few roundings of |W x|
        assert torch.allclose(adapted(x), written_out(base, adapted, x, scale), atol=1e-13, rtol=0)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable == adapter_names(adapted) and len(trainable) == 4
    assert all(p.requires_grad for p in base.parameters())  # the original is untouched
    shapes = {n: tuple(p.shape) for n, p in adapted.named_parameters() if p.requires_grad}
    assert shapes["0.lora_A.default.weight"] == (rank, 4)
    assert shapes["2.lora_B.default.weight"] == (3, rank)


def test_seeds_and_redraws_change_a0_not_the_function():
    base = base_network()
    x = make_inputs("mlp", 5, in_features=4, seed=1)
    first, same, other = (
        add_lora(base, 2, seed=0),
        add_lora(base, 2, seed=0),
        add_lora(base, 2, seed=1),
    )
    flat = [FunctionalModel(m).flat_params() for m in (first, same, other)]
    assert torch.equal(flat[0], flat[1]) and not torch.equal(flat[0], flat[2])
    redrawn = redraw_adapters(first, seed=5)
    redrawn_flat = FunctionalModel(redrawn).flat_params()
    assert not torch.equal(redrawn_flat, flat[0])
    assert not torch.equal(
        FunctionalModel(redraw_adapters(first, seed=6)).flat_params(), redrawn_flat
    )
    assert torch.equal(
        redraw_adapters(first, seed=5).state_dict()["0.lora_A.default.weight"],
        redrawn.state_dict()["0.lora_A.default.weight"],
    )
    with torch.no_grad():
        assert torch.equal(redrawn(x), base(x))
    assert torch.equal(FunctionalModel(first).flat_params(), flat[0])  # the input is not modified


def test_zoo_models_take_adapters_on_every_linear_layer():
    for arch in ("mlp", "resmlp", "transformer"):
        net = build_model(arch, 3, width=4, depth=1)
        adapted = add_lora(net, 1)
        assert len(adapter_names(adapted)) == 2 * len(linear_layers(net))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: add_lora(base_network(), 0), "rank"),
        (lambda: add_lora(base_network(), 2, alpha=float("inf")), "alpha"),
        (lambda: add_lora(base_network(), 2, targets=["1"]), "not Linear layers"),
        (lambda: add_lora(nn.Tanh(), 2), "no nn.Linear"),
        (lambda: redraw_adapters(base_network(), 1), "no LoRA adapters"),
    ],
)
def test_bad_input_is_an_input_error(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_gpt2_conv1d_layers_take_transposed_adapters():
    """GPT-2's Conv1D computes x W + b (W stored d_in x d_out): its adapter adds c (B A)^T."""
    import copy

    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8, attn_implementation="eager"
    )
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(config).double().eval()
    conv = [n for n in linear_layers(base) if n != "lm_head"]
    assert len(conv) == 4
    with pytest.raises(InputError, match="mix nn.Linear and transformers Conv1D"):
        add_lora(base, 2)
    adapted = add_lora(base, 2, alpha=4.0, targets=conv, seed=3)
    params = dict(adapted.named_parameters())
    merged = copy.deepcopy(base)
    with torch.no_grad():
        for name in conv:
            b = params[f"{name}.lora_B.default.weight"]
            nn.init.normal_(b)
            a = params[f"{name}.lora_A.default.weight"]
            merged.get_submodule(name).weight += 2.0 * (b @ a).T
        tokens = torch.randint(0, 16, (3, 5), generator=torch.Generator().manual_seed(1))
        ours = adapted(input_ids=tokens, use_cache=False).logits
        expected = merged(input_ids=tokens, use_cache=False).logits
    assert torch.allclose(ours, expected, atol=1e-12, rtol=0)
