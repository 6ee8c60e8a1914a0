"""A small GPT-2 built from a ``transformers`` config: random init, eager attention, no download.

The init-distance sweeps (theory/alignment.md section 5) need a real language-model architecture
beside the toy ones.
``GPT2Logits`` wraps ``transformers.GPT2LMHeadModel`` so that, like every other architecture,
its forward maps integer tokens ``(N, T)`` to one tensor of logits. Attention is forced to the
``eager`` implementation (softmax(QK^T / sqrt(d)) V written out): fused scaled-dot-product
kernels have no forward-mode derivative and the engine's jvp (u = J v) needs one. Weights are
never downloaded: the model is built from a ``GPT2Config`` with its own random initialization
(normal(0, 0.02) weights, as in GPT-2). ``transformers`` is an optional extra (``.[gpt2]``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sublim_theory.errors import InputError

__all__ = [
    "GPT2Logits",
    "build_gpt2",
    "gpt2_available",
]


def gpt2_available() -> bool:
    """Whether the optional ``transformers`` package can be imported."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class GPT2Logits(nn.Module):
    """GPT-2 language model returning logits only.

    Args:
        vocab_size: number of tokens (and of output logits).
        d_model: embedding width (``n_embd``); must be divisible by ``n_heads``.
        n_layers: number of transformer blocks.
        n_heads: attention heads per block.
        max_len: longest sequence (``n_positions``).
        pool: ``"last"`` returns the logits at the last position, shape (N, vocab_size);
            ``"none"`` returns every position, shape (N, T, vocab_size).

    """

    def __init__(
        self,
        vocab_size: int = 16,
        d_model: int = 16,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 16,
        pool: str = "last",
    ) -> None:
        """A randomly initialized ``transformers`` GPT-2 of the given size (no download)."""
        super().__init__()
        if not gpt2_available():
            raise InputError(
                "architecture 'gpt2' needs the optional 'transformers' package; "
                "install it with: pip install -e '.[gpt2]'"
            )
        from transformers import GPT2Config, GPT2LMHeadModel

        for name, value in (
            ("vocab_size", vocab_size),
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("max_len", max_len),
        ):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"gpt2 {name} must be a positive integer, got {value!r}")
        if d_model % n_heads:
            raise InputError(f"gpt2 d_model={d_model} must be divisible by n_heads={n_heads}")
        if pool not in ("last", "none"):
            raise InputError(f"pool must be 'last' or 'none', got '{pool}'")
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_len,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation="eager",
        )
        self.pool, self.max_len = pool, max_len
        self.gpt2 = GPT2LMHeadModel(config)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of integer tokens (N, T <= max_len): the last position's, or every position's."""
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise InputError(
                f"gpt2 expects integer tokens (N, T), got {tuple(tokens.shape)} {tokens.dtype}"
            )
        if tokens.shape[1] > self.max_len:
            raise InputError(f"sequence length {tokens.shape[1]} exceeds max_len={self.max_len}")
        logits = self.gpt2(input_ids=tokens, use_cache=False).logits
        return logits[:, -1] if self.pool == "last" else logits


def build_gpt2(
    vocab_size: int = 16,
    width: int = 16,
    depth: int = 2,
    seq_len: int = 6,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> GPT2Logits:
    """A randomly initialized GPT-2 (eval mode, ``dtype``), sized like the toy transformer.

    ``width`` is d_model (2 heads when even, else 1), ``depth`` the number of blocks.

    Returns:
        The model.

    """
    torch.manual_seed(seed)
    heads = 2 if width % 2 == 0 else 1
    model = GPT2Logits(vocab_size, width, depth, heads, max(seq_len, 1))
    return model.to(dtype).eval()
