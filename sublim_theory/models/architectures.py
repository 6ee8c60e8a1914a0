"""Small reference architectures, all sized by arguments, all differentiable in forward mode.

The transformer computes attention explicitly (softmax(QK^T / sqrt(d)) V): PyTorch's fused
scaled-dot-product kernels have no forward-mode derivative, and the engine needs jvp.
``build_model`` and ``make_inputs`` give the CLI, the sweeps and the tests one way to get a
model and matching distillation inputs by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "CNN",
    "MLP",
    "ResidualMLP",
    "SelfAttention",
    "TinyTransformer",
    "TransformerBlock",
    "build_model",
    "make_inputs",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise InputError(f"unknown activation '{name}'; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


class MLP(nn.Sequential):
    """x -> Linear -> act -> ... -> Linear, widths given per hidden layer."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, activation: str = "tanh"
    ) -> None:
        """Linear layers ``in_features -> hidden... -> out_features`` with ``activation`` between."""
        sizes = [_positive("in_features", in_features)]
        sizes += [_positive("hidden width", h) for h in hidden]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(d_in, d_out), _activation(activation)]
        layers.append(nn.Linear(sizes[-1], _positive("out_features", out_features)))
        super().__init__(*layers)


class CNN(nn.Module):
    """Conv(3x3) -> act blocks with stride-2 downsampling, global average pool, linear head."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ) -> None:
        """One 3x3 conv block per entry of ``channels`` (stride 2 after the first), then the head."""
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = _positive("in_channels", in_channels)
        for i, c in enumerate(channels):
            blocks += [
                nn.Conv2d(c_in, _positive("channels", c), 3, stride=1 if i == 0 else 2, padding=1),
                _activation(activation),
            ]
            c_in = c
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, _positive("out_features", out_features))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, out_features) of images (N, C, H, W)."""
        return self.head(self.body(x).mean(dim=(-2, -1)))


class ResidualMLP(nn.Module):
    """Pre-LayerNorm residual MLP: h <- h + W2 act(W1 LN(h)), then LN and a linear head."""

    def __init__(
        self, in_features: int, width: int, depth: int, out_features: int, activation: str = "gelu"
    ) -> None:
        """Embed to ``width``, ``depth`` pre-LayerNorm residual blocks, LayerNorm and head."""
        super().__init__()
        width = _positive("width", width)
        self.embed = nn.Linear(_positive("in_features", in_features), width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 2 * width),
                _activation(activation),
                nn.Linear(2 * width, width),
            )
            for _ in range(_positive("depth", depth))
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, _positive("out_features", out_features))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, out_features) of inputs (N, in_features)."""
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h))


class SelfAttention(nn.Module):
    """Multi-head causal self-attention written out explicitly so that jvp works through it."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = True) -> None:
        """``n_heads`` heads over ``d_model`` (divisible by it), one qkv and one output map."""
        super().__init__()
        if d_model % n_heads:
            raise InputError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(d_head) [+ causal mask]) v, heads merged: (N, T, d) -> (N, T, d)."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        shape = (n, t, self.n_heads, d // self.n_heads)
        q, k, v = (a.reshape(shape).transpose(1, 2) for a in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.n_heads)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        attended = torch.softmax(scores, dim=-1) @ v
        return self.proj(attended.transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then + MLP(LN(.)) with a 4x GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = True) -> None:
        """The block's two LayerNorms, its attention and its MLP."""
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, n_heads, causal)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        """The block applied to (N, T, d_model)."""
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Decoder-only transformer over integer tokens (N, T).

    ``pool="last"`` returns the outputs at the last position, shape (N, out_features) (a
    sequence classifier); ``pool="none"`` returns every position, shape (N, T, out_features)
    (a language model when out_features = vocab_size).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        max_len: int = 16,
        out_features: int | None = None,
        pool: str = "last",
        causal: bool = True,
    ) -> None:
        """Token and position embeddings, ``n_layers`` blocks, LayerNorm and head."""
        super().__init__()
        if pool not in ("last", "none"):
            raise InputError(f"pool must be 'last' or 'none', got '{pool}'")
        self.pool, self.max_len = pool, _positive("max_len", max_len)
        self.token = nn.Embedding(
            _positive("vocab_size", vocab_size), _positive("d_model", d_model)
        )
        self.position = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, _positive("n_heads", n_heads), causal)
            for _ in range(_positive("n_layers", n_layers))
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_features or vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of integer tokens (N, T): (N, out) at the last position, or (N, T, out)."""
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise InputError(
                f"transformer expects integer tokens (N, T), got {tuple(tokens.shape)} {tokens.dtype}"
            )
        t = tokens.shape[1]
        if t > self.max_len:
            raise InputError(f"sequence length {t} exceeds max_len={self.max_len}")
        h = self.token(tokens) + self.position(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            h = block(h)
        out = self.head(self.norm(h))
        return out[:, -1] if self.pool == "last" else out


ARCHITECTURES = ("mlp", "cnn", "resmlp", "transformer")


def build_model(
    arch: str,
    out_features: int = 10,
    *,
    in_features: int = 8,
    width: int = 16,
    depth: int = 2,
    activation: str | None = None,
    vocab_size: int = 16,
    seq_len: int = 6,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> nn.Module:
    """A freshly initialized model of a named architecture, in eval mode, in ``dtype``.

    Sizes: ``width`` is the hidden width (CNN channels, transformer d_model), ``depth`` the
    number of hidden layers / blocks. The CNN pools globally, so it takes images of any size
    (``make_inputs(..., image_size=...)``).

    Returns:
        The model.

    Raises:
        InputError: an unknown architecture or a non-positive size.

    """
    torch.manual_seed(seed)
    if arch == "mlp":
        model: nn.Module = MLP(in_features, [width] * depth, out_features, activation or "tanh")
    elif arch == "cnn":
        model = CNN(1, [width] * depth, out_features, activation or "relu")
    elif arch == "resmlp":
        model = ResidualMLP(in_features, width, depth, out_features, activation or "gelu")
    elif arch == "transformer":
        heads = 2 if width % 2 == 0 else 1
        model = TinyTransformer(vocab_size, width, heads, depth, seq_len, out_features)
    else:
        raise InputError(f"unknown architecture '{arch}'; choose one of {list(ARCHITECTURES)}")
    return model.to(dtype).eval()


def make_inputs(
    arch: str,
    n: int,
    *,
    in_features: int = 8,
    image_size: int = 8,
    vocab_size: int = 16,
    seq_len: int = 6,
    distribution: str = "gaussian",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Distillation inputs unrelated to any trait: noise vectors/images, or random tokens.

    ``distribution``: ``gaussian`` (N(0,1)) or ``uniform`` (U[-1,1]); tokens are always uniform.

    Returns:
        The inputs (N, ...): floats for the MLP/CNN, integer tokens for the transformers.

    Raises:
        InputError: an unknown architecture or distribution.

    """
    generator = torch.Generator().manual_seed(seed)
    if arch == "transformer":
        return torch.randint(0, vocab_size, (n, seq_len), generator=generator)
    shapes = {
        "mlp": (n, in_features),
        "resmlp": (n, in_features),
        "cnn": (n, 1, image_size, image_size),
    }
    if arch not in shapes:
        raise InputError(f"unknown architecture '{arch}'; choose one of {list(ARCHITECTURES)}")
    if distribution == "gaussian":
        return torch.randn(shapes[arch], generator=generator, dtype=dtype)
    if distribution == "uniform":
        return 2 * torch.rand(shapes[arch], generator=generator, dtype=dtype) - 1
    raise InputError(f"unknown input distribution '{distribution}'; choose gaussian or uniform")
