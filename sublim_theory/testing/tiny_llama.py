"""A tiny random Llama chat model with a tokenizer, built offline: the stand-in for a real LLM in tests.

It goes through the same code paths as SmolLM2 (a ``transformers`` ``LlamaForCausalLM`` with a
chat template): :func:`save_tiny_llama` writes it as a local ``transformers`` directory and
:func:`write_tiny_gguf` as a GGUF file (float32 tensors under llama.cpp's names, a byte-level
BPE vocabulary), so ``load_pretrained`` can read either. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "save_tiny_llama",
    "tiny_llama",
    "tiny_tokenizer",
    "write_tiny_gguf",
]

# The ChatML layout of SmolLM2, without its default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE spells bytes with (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _vocabulary() -> list[str]:
    """Special tokens, then the 256 byte characters: a byte-level BPE without merges."""
    return [*SPECIAL_TOKENS, *_byte_alphabet()]


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (no merges: one token per byte) with a ChatML template.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``<|im_end|>`` as EOS and
        ``<|endoftext|>`` as padding.

    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(_vocabulary())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(
    seed: int = 0, hidden: int = 16, layers: int = 2, dtype: torch.dtype = torch.float32
) -> Any:
    """A random ``LlamaForCausalLM`` over :func:`tiny_tokenizer`'s vocabulary (eval, eager).

    Returns:
        The model: ``hidden`` wide, ``layers`` deep, 2 heads (1 key/value head), tied embeddings.

    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(_vocabulary()),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def save_tiny_llama(directory: str | Path, seed: int = 0) -> Path:
    """Write :func:`tiny_llama` (float32) and :func:`tiny_tokenizer` as a transformers directory.

    Returns:
        The directory.

    """
    directory = Path(directory)
    tiny_llama(seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def write_tiny_gguf(path: str | Path, seed: int = 0) -> Path:
    """Write :func:`tiny_llama` as a GGUF file (float32 tensors, llama.cpp names, byte-level BPE).

    The query/key weights are stored as transformers reads them back (llama.cpp's rotary
    reordering is not applied), so the file is a valid GGUF of *some* tiny Llama, not
    necessarily the same function as ``tiny_llama(seed)``; tests compare loads of this file.

    Returns:
        The path written.

    """
    import gguf

    model = tiny_llama(seed)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    tokens = _vocabulary()
    writer.add_token_list(tokens)
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_token_types([control if t in SPECIAL_TOKENS else normal for t in tokens])
    writer.add_token_scores([0.0] * len(tokens))  # no merges: derived (none) from the vocabulary
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for layer in range(config.num_hidden_layers):
        for ours, theirs in names.items():
            tensor = state[f"model.layers.{layer}.{ours}.weight"]
            writer.add_tensor(f"blk.{layer}.{theirs}.weight", tensor)
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
