"""Second directional derivatives by nested forward mode, made correct for normalization layers.

B (theory/alignment.md, second order) needs w = D^2 f(theta)[v, v], a jvp of a jvp. In torch
2.13 and 2.14 the forward-over-forward derivative of the fused ``layer_norm`` and
``instance_norm`` kernels is wrong (the first jvp is right; the second is off by O(1): our
test ``test_forward_ad.py`` measures it against reverse-over-reverse). Every other operator our
architectures use composes correctly. ``explicit_normalization()`` is a TorchFunctionMode that,
while active, evaluates those two functionals with elementary ops (mean, var, rsqrt), whose
nested forward derivatives are exact. It applies to any user module that calls them
(``nn.LayerNorm``, ``nn.InstanceNorm*``, or ``F.layer_norm`` directly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = [
    "explicit_normalization",
]


def _layer_norm(
    x: Tensor,
    normalized_shape: tuple[int, ...] | list[int] | int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing ``normalized_shape`` axes."""
    ndim = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    dims = tuple(range(-ndim, 0))
    centered = x - x.mean(dim=dims, keepdim=True)
    out = centered * torch.rsqrt(centered.pow(2).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def _instance_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance norm with batch statistics over the spatial axes (the case with a broken derivative)."""
    if not use_input_stats:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    dims = tuple(range(2, x.ndim))
    centered = x - x.mean(dim=dims, keepdim=True)
    out = centered * torch.rsqrt(centered.pow(2).mean(dim=dims, keepdim=True) + eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out + bias.reshape(shape) if bias is not None else out


_REPLACEMENTS = {
    F.layer_norm: _layer_norm,
    torch.layer_norm: _layer_norm,
    F.instance_norm: _instance_norm,
}


class explicit_normalization(TorchFunctionMode):  # noqa: N801 (used as a context manager)
    """Context manager: layer/instance norm computed from elementary ops (exact nested jvp)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        replacement = _REPLACEMENTS.get(func)
        if replacement is not None:
            return replacement(*args, **kwargs)
        return func(*args, **kwargs)
