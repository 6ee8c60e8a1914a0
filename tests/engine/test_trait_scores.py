"""Factored trait scores against explicit per-example gradients, in float64.

The oracle: one reverse-mode gradient per example (a loop of ``torch.func.grad``), stacked into
(N, P) and multiplied by the directions. The fast path never forms a per-example gradient of the
whole network. Error model: both sides are float64 inner products of length <= P computed in
different orders, plus rounding inside a few layers' forward and backward passes, so
|fast - oracle| <= (2 P + 100) u64 ||g_k|| ||grad l_i|| (Higham's gamma_P, Cauchy-Schwarz); the
issue's bar, relative error <= 1e-10 of ||g_k|| ||grad l_i||, is checked too.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import grad

from sublim_theory.engine import screen as S
from sublim_theory.engine import trait_scores as T
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora
from sublim_theory.errors import InputError
from sublim_theory.models.architectures import MLP, ResidualMLP, build_model
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import (
    CorpusConfig,
    ModelConfig,
    NumbersConfig,
)
from sublim_theory.testbeds.lm.screening import (
    animal_probes,
    number_student_data,
    number_student_loss,
)

U64 = torch.finfo(torch.float64).eps
ISSUE_BAR = 1e-10  # issue 23: relative error <= 1e-10 of ||g_k|| ||grad l_i||


# --------------------------------------------------------------------------------------------
# oracle and models
# --------------------------------------------------------------------------------------------
def per_example_gradients(model, theta, inputs, targets, example_loss):
    """The oracle: one reverse-mode gradient per example, stacked (N, P)."""
    rows = []
    for i in range(inputs.shape[0]):
        x, y = inputs[i : i + 1], targets[i : i + 1]
        rows.append(grad(lambda t, x=x, y=y: example_loss(model(t, x), y).sum())(theta))
    return torch.stack(rows)


def assert_matches_oracle(fast, gradients, directions):
    scale = torch.outer(gradients.norm(dim=1), directions.norm(dim=1))
    oracle = gradients @ directions.T
    error = (fast - oracle).abs()
    bound = (2 * directions.shape[1] + 100) * U64 * scale
    assert (error <= bound).all(), (
        f"max error {float(error.max()):.3g}, bound {float(bound.min()):.3g}"
    )
    assert float((error / scale).max()) <= ISSUE_BAR


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy per sequence."""
    picked = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -picked.mean(1)


def numbers_lm():
    """The number experiment's LM (``training.build_lm``) at tiny size, float64, and its data."""
    config = NumbersConfig(
        model=ModelConfig(d_model=8, n_heads=2, n_layers=2),
        corpus=CorpusConfig(
            n_numbers=12, prompt_len=2, continuation_len=3, animals=("owl", "cat", "dog")
        ),
    )
    net = training.build_lm(config, 0).double()
    docs = corpus.pretraining_corpus(config.corpus, 9, seed=1)[
        :, : corpus.sequence_len(config.corpus)
    ]
    inputs, targets = number_student_data(docs)
    return config, FunctionalModel(net), inputs, targets, number_student_loss(config)


class CausalLogits(nn.Module):
    """A transformers causal LM as tokens -> logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits


@pytest.fixture
def float64_llama(monkeypatch):
    """A tiny random Llama (tied embedding and head, RMSNorm, grouped-query attention).

    transformers computes RMSNorm and the eager attention softmax in float32 even for a float64
    model; both are replaced by the same math in the model's dtype, so that the comparison
    measures this kernel and not float32 rounding (the unpatched model is checked below at a
    float32 tolerance).
    """
    from transformers.models.llama import modeling_llama

    def rms_norm(self, hidden: Tensor) -> Tensor:
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        keys = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        values = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        weights = torch.matmul(query, keys.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = torch.softmax(weights, -1)
        return torch.matmul(weights, values).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", attention)
    return llama()


def llama():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=19,
        max_position_embeddings=16,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return CausalLogits(transformers.LlamaForCausalLM(config)).double().eval()


def llama_data(seed: int = 1):
    docs = torch.randint(0, 19, (5, 7), generator=torch.Generator().manual_seed(seed))
    return docs[:, :-1], docs[:, 1:]


def soft_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return -(torch.softmax(targets, -1) * torch.log_softmax(outputs, -1)).sum(-1)


def directions_for(model: FunctionalModel, count: int, seed: int = 2) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, model.num_params, dtype=torch.float64, generator=generator)


class TiedLanguageModel(nn.Module):
    """Embedding E tied to the head, and one block applied twice (two uses of W and b)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(6, 3)
        self.block = nn.Linear(3, 3)
        self.head = nn.Linear(3, 6, bias=False)
        self.head.weight = self.embed.weight
        self.double()

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        for _ in range(2):
            h = torch.tanh(self.block(h))
        return self.head(h)


class PaddedTokens(nn.Module):
    """An embedding with padding_idx = 0 (no gradient there) before a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(7, 4, padding_idx=0)
        self.head = nn.Linear(4, 7)
        self.double()

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(tokens)))


# --------------------------------------------------------------------------------------------
# the kernel against the oracle
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 6])
@pytest.mark.parametrize("chunk", [None, 4])
def test_numbers_lm_matches_per_example_gradients(count, chunk):
    _, model, inputs, targets, loss = numbers_lm()
    theta = model.flat_params()
    directions = directions_for(model, count)
    fast = T.trait_scores(model, theta, inputs, targets, loss, directions, chunk)
    assert_matches_oracle(
        fast, per_example_gradients(model, theta, inputs, targets, loss), directions
    )


def test_llama_with_tied_embeddings_matches_per_example_gradients(float64_llama):
    model = FunctionalModel(float64_llama)
    theta = model.flat_params()
    inputs, targets = llama_data()
    uses = T.factored_uses(model, theta, inputs)
    tied = [use.kind for use in uses if use.parameters == ("model.model.embed_tokens.weight",)]
    assert tied == ["embedding", "linear"]  # the embedding and the head: both uses are scored
    assert {use.kind for use in uses} == {"embedding", "linear", "elementwise"}  # RMSNorm: x * w
    directions = directions_for(model, 3)
    fast = T.trait_scores(model, theta, inputs, targets, token_loss, directions, 2)
    oracle = per_example_gradients(model, theta, inputs, targets, token_loss)
    assert_matches_oracle(fast, oracle, directions)


def test_llama_as_transformers_computes_it_agrees_to_float32_rounding():
    # unpatched: RMSNorm and softmax in float32 on both sides; ~1e3 float32 roundings
    model = FunctionalModel(llama())
    theta = model.flat_params()
    inputs, targets = llama_data()
    directions = directions_for(model, 2)
    fast = T.trait_scores(model, theta, inputs, targets, token_loss, directions)
    oracle = per_example_gradients(model, theta, inputs, targets, token_loss)
    scale = torch.outer(oracle.norm(dim=1), directions.norm(dim=1))
    assert (
        (fast - oracle @ directions.T).abs() <= 1e3 * torch.finfo(torch.float32).eps * scale
    ).all()


class TransposedWeight(nn.Module):
    """x @ W.T + b with bare parameters: derived tensors (W.T, b[None]), a matmul, a product."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(4, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.weight.T + self.bias.unsqueeze(0)) * self.bias


@pytest.mark.parametrize(
    ("arch", "count"),
    [("mlp", 5), ("mlp", 1), ("resmlp", 5), ("cnn", 5), ("cnn", 1), ("transposed", 3)],
)
def test_mlp_and_fallback_layers_match_per_example_gradients(arch, count):
    # an MLP (one position: the projecting order), LayerNorm (the norm kernel), convolutions
    # (the generic fallback: per example at K = 5, per direction for the second conv at K = 1),
    # parameters reaching a matmul through W.T (a derived tensor)
    torch.manual_seed(0)
    if arch == "mlp":
        net = MLP(5, [7, 6], 4, "tanh").double().eval()
        inputs = torch.randn(8, 5, dtype=torch.float64)
    elif arch == "resmlp":
        net = ResidualMLP(5, 6, 2, 4).double().eval()
        inputs = torch.randn(8, 5, dtype=torch.float64)
    elif arch == "cnn":
        net = build_model("cnn", 4, width=3, depth=2)
        inputs = torch.randn(6, 1, 6, 6, dtype=torch.float64)
    else:
        net = TransposedWeight()
        inputs = torch.randn(8, 5, dtype=torch.float64)
    model = FunctionalModel(net)
    theta = model.flat_params()
    targets = torch.randn(inputs.shape[0], 4, dtype=torch.float64)
    directions = directions_for(model, count)
    fast = T.trait_scores(model, theta, inputs, targets, soft_loss, directions, 3)
    oracle = per_example_gradients(model, theta, inputs, targets, soft_loss)
    assert_matches_oracle(fast, oracle, directions)


def test_reused_and_tied_parameters_sum_every_use():
    model = FunctionalModel(TiedLanguageModel())
    theta = model.flat_params()
    tokens = torch.randint(0, 6, (7, 5), generator=torch.Generator().manual_seed(3))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    kinds = [(u.kind, u.parameters) for u in T.factored_uses(model, theta, inputs)]
    assert kinds == [
        ("embedding", ("embed.weight",)),
        ("linear", ("block.bias", "block.weight")),
        ("linear", ("block.bias", "block.weight")),
        ("linear", ("embed.weight",)),
    ]
    directions = directions_for(model, 4)
    fast = T.trait_scores(model, theta, inputs, targets, token_loss, directions)
    assert_matches_oracle(
        fast, per_example_gradients(model, theta, inputs, targets, token_loss), directions
    )


def test_lora_adapters_match_per_example_gradients():
    _, model, inputs, targets, loss = numbers_lm()
    adapted = FunctionalModel(add_lora(model.module, 2, seed=1))
    theta = adapted.flat_params()
    theta = theta + 0.3 * torch.randn(
        theta.shape, generator=torch.Generator().manual_seed(4), dtype=theta.dtype
    )
    directions = directions_for(adapted, 3)
    fast = T.trait_scores(adapted, theta, inputs, targets, loss, directions, 5)
    oracle = per_example_gradients(adapted, theta, inputs, targets, loss)
    assert_matches_oracle(fast, oracle, directions)


def test_embedding_padding_rows_get_no_gradient_as_in_torchs_backward():
    # (the jvp path differs here: forward mode differentiates the padding row too, which the
    # training step never moves)
    model = FunctionalModel(PaddedTokens())
    theta = model.flat_params()
    tokens = torch.randint(0, 7, (6, 5), generator=torch.Generator().manual_seed(5))
    tokens[:, 0] = 0
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    directions = directions_for(model, 3)
    fast = T.trait_scores(model, theta, inputs, targets, token_loss, directions)
    oracle = per_example_gradients(model, theta, inputs, targets, token_loss)
    assert_matches_oracle(fast, oracle, directions)


@pytest.mark.parametrize("cost", [0, 10**9])
@pytest.mark.parametrize("budget", [7, T.MEMORY_BUDGET])
def test_every_contraction_order_and_block_size_gives_the_same_scores(monkeypatch, cost, budget):
    # the cost weight picks the order (0: project / scatter; huge: per-example / gather) and a
    # tiny memory budget cuts every contraction into blocks of one row
    monkeypatch.setattr(T, "MEMORY_BOUND_COST", cost)
    _, model, inputs, targets, loss = numbers_lm()
    theta = model.flat_params()
    directions = directions_for(model, 3)
    fast = T.trait_scores(model, theta, inputs, targets, loss, directions, memory_budget=budget)
    assert_matches_oracle(
        fast, per_example_gradients(model, theta, inputs, targets, loss), directions
    )


def test_the_jvp_path_and_the_factored_path_agree_in_float32():
    # the model's own dtype: equal to float32 rounding (both reduce in float64 at the end)
    _, model, inputs, targets, loss = numbers_lm()
    model = FunctionalModel(model.module.float())
    theta = model.flat_params()
    directions = directions_for(model, 3)
    fast = T.trait_scores(model, theta, inputs, targets, loss, directions)
    jvp = S.example_attributions(model, theta, inputs, targets, loss, directions)
    oracle = per_example_gradients(model, theta, inputs, targets, loss).double()
    scale = torch.outer(oracle.norm(dim=1), directions.norm(dim=1))
    assert ((fast - jvp).abs() <= 1e3 * torch.finfo(torch.float32).eps * scale).all()
    # the probe-factored path in float32, with a preconditioner
    probes = token_probes([corpus.question_prompt(), torch.tensor([[1, 2, 3]])], [2, 5])
    probes = [probes[0], probes[2], probes[1], probes[3]]  # groups {0, 2} and {1, 3}
    factors = T.probe_factors(model, theta, probes)
    p = 0.5 + torch.rand(model.num_params, generator=torch.Generator().manual_seed(8))
    directions = S.trait_gradients(model, theta, probes) * p.double()
    fast = T.probe_trait_scores(model, theta, inputs, targets, loss, factors, p)
    jvp = S.example_attributions(model, theta, inputs, targets, loss, directions)
    scale = torch.outer(oracle.norm(dim=1), directions.norm(dim=1))
    assert ((fast - jvp).abs() <= 1e3 * torch.finfo(torch.float32).eps * scale).all()


# --------------------------------------------------------------------------------------------
# directions that are probe gradients: their own factors
# --------------------------------------------------------------------------------------------
def token_probes(prompts: list[Tensor], tokens: list[int]) -> list[S.TraitProbe]:
    """-log P(token | prompt's last position), every token for every prompt."""

    def probe(prompt: Tensor, token: int) -> S.TraitProbe:
        return S.TraitProbe(
            f"{token}", prompt, lambda z: -torch.log_softmax(z[:, -1], -1)[:, token].mean()
        )

    return [probe(p, t) for p in prompts for t in tokens]


@pytest.mark.parametrize("preconditioned", [False, True])
def test_probe_factors_match_per_example_gradients_on_the_numbers_lm(preconditioned):
    config, model, inputs, targets, loss = numbers_lm()
    theta = model.flat_params()
    prompts = [corpus.question_prompt(), torch.tensor([[corpus.BOS, corpus.NUM, 5], [1, 2, 3]])]
    probes = token_probes(prompts, [2, 5, 7])
    factors = T.probe_factors(model, theta, probes)
    reference = S.trait_gradients(model, theta, probes)  # one reverse pass per probe
    difference = (factors.gradients - reference).norm(dim=1)
    assert (difference <= (2 * model.num_params + 100) * U64 * reference.norm(dim=1)).all()
    factored = {model.names[i] for i in factors.factors}
    assert "blocks.0.attention.qkv.weight" in factored and "token.weight" in factored
    assert "blocks.0.norm1.weight" not in factored  # a norm: the flat directions are used
    generator = torch.Generator().manual_seed(6)
    scale = 0.5 + torch.rand(model.num_params, dtype=torch.float64, generator=generator)
    scale = scale if preconditioned else None
    fast = T.probe_trait_scores(model, theta, inputs, targets, loss, factors, scale, 4)
    directions = reference if scale is None else reference * scale
    assert_matches_oracle(
        fast, per_example_gradients(model, theta, inputs, targets, loss), directions
    )


@pytest.mark.parametrize("preconditioned", [False, True])
def test_probe_factors_on_llama_leave_the_tied_weight_to_the_flat_path(
    float64_llama, preconditioned
):
    model = FunctionalModel(float64_llama)
    theta = model.flat_params()
    inputs, targets = llama_data()
    probes = token_probes([torch.tensor([[3, 4]])], [1, 2, 9, 11])
    factors = T.probe_factors(model, theta, probes)
    # the tied weight has factors of two kinds: its data uses contract with its flat direction
    assert factors.roles(model.names.index("model.model.embed_tokens.weight")) == {
        "embedding",
        "weight",
    }
    assert factors.roles(model.names.index("model.model.norm.weight")) is None
    assert factors.roles(model.names.index("model.model.layers.0.mlp.up_proj.weight")) == {"weight"}
    generator = torch.Generator().manual_seed(7)
    scale = 0.5 + torch.rand(model.num_params, dtype=torch.float64, generator=generator)
    scale = scale if preconditioned else None
    fast = T.probe_trait_scores(model, theta, inputs, targets, token_loss, factors, scale, 3)
    directions = factors.gradients if scale is None else factors.gradients * scale
    oracle = per_example_gradients(model, theta, inputs, targets, token_loss)
    assert_matches_oracle(fast, oracle, directions)


# --------------------------------------------------------------------------------------------
# what the factored path refuses
# --------------------------------------------------------------------------------------------
class FlattensTheExamples(nn.Module):
    """Applies its Linear to (N * T, d) rows: uses that cannot be assigned to examples."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5)
        self.double()

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        return self.head(h.reshape(-1, 3)).reshape(*tokens.shape, 5)


class ScalesItsWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.double()

    def forward(self, x: Tensor) -> Tensor:
        self.layer.weight.mul_(1.0)
        return self.layer(x)


class WritesATokenIn(nn.Module):
    """Writes a learned token into the activations in place (h[:, 0] = cls)."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.ones(3, dtype=torch.float64))
        self.layer = nn.Linear(3, 2).double()

    def forward(self, x: Tensor) -> Tensor:
        h = x.clone()
        h[:, 0] = self.cls
        return self.layer(h).sum(1)


def test_uses_it_cannot_assign_are_one_clear_error():
    tokens = torch.randint(0, 5, (4, 3))
    model = FunctionalModel(FlattensTheExamples())
    with pytest.raises(InputError, match="method='jvp'"):
        T.trait_scores(
            model, model.flat_params(), tokens, tokens, token_loss, directions_for(model, 2)
        )
    model = FunctionalModel(ScalesItsWeight())
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(InputError, match="in place"):
        T.trait_scores(model, model.flat_params(), x, x[:, :2], soft_loss, directions_for(model, 1))
    model = FunctionalModel(WritesATokenIn())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(InputError, match="in place"):
        T.trait_scores(model, model.flat_params(), x, x[:, 0], soft_loss, directions_for(model, 1))


def test_bad_input_is_one_clear_error():
    _, model, inputs, targets, loss = numbers_lm()
    theta = model.flat_params()
    with pytest.raises(InputError, match="directions"):
        T.trait_scores(model, theta, inputs, targets, loss, torch.zeros(2, 3))
    with pytest.raises(InputError, match="memory_budget"):
        T.trait_scores(
            model, theta, inputs, targets, loss, directions_for(model, 1), memory_budget=0
        )
    with pytest.raises(InputError, match="one loss per example"):
        T.trait_scores(
            model, theta, inputs, targets, lambda z, y: loss(z, y).sum(), directions_for(model, 1)
        )
    factors = T.probe_factors(model, theta, token_probes([corpus.question_prompt()], [1]))
    with pytest.raises(InputError, match="scale"):
        T.probe_trait_scores(model, theta, inputs, targets, loss, factors, torch.ones(3))
    with pytest.raises(InputError, match="no candidate traits"):
        T.probe_factors(model, theta, [])
    bad = S.TraitProbe("nan", corpus.question_prompt(), lambda z: z.sum() * float("nan"))
    with pytest.raises(InputError, match="finite scalar"):
        T.probe_factors(model, theta, [bad])


# --------------------------------------------------------------------------------------------
# the screen's factored method
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", S.VARIANTS)
def test_the_factored_screen_equals_the_jvp_screen(variant):
    config, model, inputs, targets, loss = numbers_lm()
    theta = model.flat_params()
    probes = animal_probes(config)
    rms = None
    if variant == "rms":
        rms = S.minibatch_gradient_rms(model, theta, inputs, targets, loss, 4, 3, seed=1)
    options = {
        "step_size": 1e-3,
        "steps": 3,
        "variant": variant,
        "gradient_rms": rms,
        "batch_size": 4,
        "bootstrap": 50,
    }
    jvp = S.screen(model, theta, inputs, targets, loss, probes, method="jvp", **options)
    factored = S.screen(model, theta, inputs, targets, loss, probes, method="factored", **options)
    trait_grads = S.trait_gradients(model, theta, probes)
    g = S.data_gradient(model, theta, inputs, targets, loss)
    directions = trait_grads * S.preconditioner(variant, g, rms)
    gradients = per_example_gradients(model, theta, inputs, targets, loss)
    scale = torch.outer(gradients.norm(dim=1), directions.norm(dim=1))
    bound = (2 * model.num_params + 100) * U64 * scale
    assert ((factored.attributions - jvp.attributions).abs() <= 2 * bound).all()
    assert ((factored.forecast - jvp.forecast).abs() <= 3e-3 * 2 * bound.mean(0)).all()
    assert factored.ranking == jvp.ranking
    if variant == "sgd":
        torch.testing.assert_close(factored.normalized, jvp.normalized, rtol=1e-10, atol=0)
    unnormalized = S.screen(
        model, theta, inputs, targets, loss, probes, method="factored", normalize=False, **options
    )
    assert unnormalized.normalized is None
    torch.testing.assert_close(unnormalized.attributions, factored.attributions, rtol=0, atol=0)


def test_example_attributions_offer_both_methods():
    _, model, inputs, targets, loss = numbers_lm()
    theta = model.flat_params()
    directions = directions_for(model, 3)
    jvp = S.example_attributions(model, theta, inputs, targets, loss, directions, 4)
    factored = S.example_attributions(
        model, theta, inputs, targets, loss, directions, 4, method="factored"
    )
    gradients = per_example_gradients(model, theta, inputs, targets, loss)
    assert_matches_oracle(jvp, gradients, directions)
    assert_matches_oracle(factored, gradients, directions)
    with pytest.raises(InputError, match="unknown attribution method"):
        S.example_attributions(model, theta, inputs, targets, loss, directions, method="vjp")
    with pytest.raises(InputError, match="unknown attribution method"):
        S.screen(
            model,
            theta,
            inputs,
            targets,
            loss,
            animal_probes(numbers_lm()[0]),
            step_size=1.0,
            method="x",
        )
