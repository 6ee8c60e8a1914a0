"""LoRA adapters on any module's ``nn.Linear`` (or GPT-2 ``Conv1D``) layers, through ``peft``.

Each adapted layer computes ``W_0 x + (alpha / r) B A x`` with ``W_0`` (and the bias) frozen,
``A`` (r x d_in) drawn from peft's Kaiming-uniform init and ``B`` (d_out x r) zero: the adapted
network starts as the base network (theory/optimizers.md, section 5). The trainable parameters are
the adapters alone, so :class:`sublim_theory.engine.functional.FunctionalModel` of an adapted module is
the network as a function of the flat adapter vector ``(A, B)`` of every layer: every engine
quantity (K v, the one-step update, the report) is then measured in adapter space.

Why peft and not a wrapper of our own: ``peft.inject_adapter_in_model`` swaps each target
``nn.Linear`` for a peft layer whose forward is plain tensor code, so ``torch.func.functional_call``,
``jvp``/``vjp`` and the engine's dual-number forward compose with it unchanged
(tests/engine/test_lora.py checks the adapted network against ``W_0 + (alpha / r) B A`` written out).
The module keeps its class; nothing is downloaded.

Init placements for the student: the *shared* adapter init (same base, same ``A_0``, the setting
of the first-order statement), an *other adapter seed* (same base, ``A_0`` redrawn: B still starts
at 0, so the network function is unchanged but the adapter-space Gauss-Newton matrix is not), and
an independent base (a different ``W_0``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from sublim_theory.errors import InputError

__all__ = [
    "adapter_names",
    "add_lora",
    "linear_layers",
    "redraw_adapters",
]

_ADAPTER = "default"


def _is_conv1d(sub: nn.Module) -> bool:
    """Whether ``sub`` is transformers' ``Conv1D`` (GPT-2): a Linear layer storing W transposed."""
    return type(sub).__name__ == "Conv1D" and type(sub).__module__.startswith("transformers")


def linear_layers(module: nn.Module) -> list[str]:
    """The qualified names of ``module``'s ``nn.Linear`` (and transformers ``Conv1D``) submodules.

    GPT-2 keeps its projections in ``Conv1D`` layers (``y = x W + b``, W stored as
    (d_in, d_out)); peft adapts them with ``fan_in_fan_out``. Names are in registration order.

    Returns:
        The names, in module order.

    """
    return [
        name
        for name, sub in module.named_modules()
        if name and (isinstance(sub, nn.Linear) or _is_conv1d(sub))
    ]


def _peft():
    try:
        import peft
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise InputError(
            "LoRA needs the peft package: pip install 'sublim-theory[lora]' (or pip install peft)"
        ) from error
    return peft


def add_lora(
    module: nn.Module,
    rank: int,
    *,
    alpha: float | None = None,
    targets: Sequence[str] | None = None,
    seed: int = 0,
    beyond_full_rank: bool = False,
) -> nn.Module:
    """A copy of ``module`` with rank-``rank`` LoRA adapters on its Linear layers, base frozen.

    Args:
        module: any module; it is deep-copied and left unchanged.
        rank: r >= 1, the adapters' rank.
        alpha: the LoRA scale numerator (scale = alpha / r); default ``rank`` (scale 1).
        targets: names of the Linear layers to adapt (:func:`linear_layers`); default all.
        seed: seed of the adapters' ``A_0`` draw (peft's Kaiming-uniform init); ``B_0 = 0``.
        beyond_full_rank: allow a rank above the smallest dimension of an adapted layer,
            ``r > min(d_in, d_out)``. Such an adapter is full-rank there: ``B A`` can already
            be any ``d_out x d_in`` matrix at ``r = min(d_in, d_out)``, so the extra rank adds
            no reachable update, only parameters, and changes the adapter-space geometry (the
            Gauss-Newton matrix in ``(A, B)``, theory/optimizers.md section 5). Refused unless
            asked for, since it is usually a rank meant for a wider model.

    Returns:
        The adapted copy, in ``module``'s dtype and device, in eval mode if ``module`` was.
        Only its adapter parameters have ``requires_grad=True``.

    Raises:
        InputError: rank < 1, alpha not finite and > 0, an unknown or non-Linear target, a
            module without Linear layers, or (without ``beyond_full_rank``) a rank above the
            smallest dimension of an adapted layer.

    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise InputError(f"LoRA alpha must be a finite number > 0, got {alpha}")
    available = linear_layers(module)
    if not available:
        raise InputError(f"{type(module).__name__} has no nn.Linear layer to put an adapter on")
    chosen = list(available if targets is None else targets)
    unknown = [t for t in chosen if t not in available]
    if unknown or not chosen:
        raise InputError(
            f"LoRA targets {unknown or chosen} are not Linear layers of "
            f"{type(module).__name__}; choose from {available}"
        )
    submodules = dict(module.named_modules())
    transposed = {_is_conv1d(submodules[t]) for t in chosen}
    if len(transposed) > 1:
        raise InputError(
            "the LoRA targets mix nn.Linear and transformers Conv1D layers, which peft adapts "
            "with different fan_in_fan_out settings; pass targets of one kind (e.g. GPT-2's "
            "attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)"
        )
    if not beyond_full_rank:
        sizes = {t: tuple(submodules[t].weight.shape) for t in chosen}
        name, shape = min(sizes.items(), key=lambda item: min(item[1]))
        if rank > min(shape):
            raise InputError(
                f"LoRA rank {rank} exceeds the smallest adapted dimension {min(shape)} (layer "
                f"'{name}', weight {shape[0]} x {shape[1]}): r = {min(shape)} already spans every "
                f"update of it; use rank <= {min(shape)}, fewer targets, or "
                "beyond_full_rank=True"
            )
    peft = _peft()
    reference = next(iter(module.parameters()))
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=chosen,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=transposed == {True},
    )
    adapted = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapted = peft.inject_adapter_in_model(config, adapted)
    adapted = adapted.to(dtype=reference.dtype, device=reference.device)
    for name, parameter in adapted.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    adapted.train(module.training)
    return adapted


def adapter_names(module: nn.Module) -> list[str]:
    """The names of the adapter parameters (``...lora_A...``/``...lora_B...``) of an adapted module."""
    return [name for name, _ in module.named_parameters() if ".lora_" in name]


def redraw_adapters(module: nn.Module, seed: int) -> nn.Module:
    """A copy of an adapted module with every ``A_0`` redrawn from ``seed`` and ``B`` reset to 0.

    The network function is unchanged (``B = 0``); the adapter-space geometry is not: the
    "other adapter seed" placement of theory/optimizers.md, section 5.

    Returns:
        The copy.

    Raises:
        InputError: ``module`` has no LoRA adapters (use :func:`add_lora` first).

    """
    if not adapter_names(module):
        raise InputError("the module has no LoRA adapters; build it with add_lora first")
    redrawn = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for sub in redrawn.modules():
            if hasattr(sub, "reset_lora_parameters") and _ADAPTER in getattr(sub, "lora_A", {}):
                sub.reset_lora_parameters(_ADAPTER, True)
    return redrawn
