"""A functional view of any ``torch.nn.Module``: outputs as a function of one flat parameter vector.

Every quantity of the theory (theory/alignment.md) is a function of the parameters theta in R^P.
Working with one flat vector makes the jvp/vjp algebra read like the math: ``v`` is a vector,
``<a, b>`` is a dot product, ``theta_0 + eps * v`` is a teacher. Unflattening is a ``split`` of
views, so it costs nothing and forward-mode AD flows through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sublim_theory.errors import InputError

__all__ = [
    "FunctionalModel",
    "check_module_is_functional",
]

# Modules whose train-mode forward is not a deterministic function of (parameters, one input).
_STATEFUL_IN_TRAIN = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Dropout)


def _stateful_submodules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm/Dropout submodules of ``module``, whose mode decides if it is functional."""
    return [(n, sub) for n, sub in module.named_modules() if isinstance(sub, _STATEFUL_IN_TRAIN)]


def _raise_if_training(module: nn.Module, stateful: list[tuple[str, nn.Module]]) -> None:
    for name, sub in stateful:
        if sub.training:
            kind = "BatchNorm" if isinstance(sub, nn.modules.batchnorm._BatchNorm) else "Dropout"
            raise InputError(
                f"module '{name or type(module).__name__}' is {kind} in train mode: its output "
                f"is not a deterministic per-input function of the parameters "
                f"({'batch statistics couple samples' if kind == 'BatchNorm' else 'random masks'}"
                "); call model.eval() before measuring alignment"
            )


def check_module_is_functional(module: nn.Module) -> None:
    """Raise a clear error for modules whose train-mode forward breaks the theory's assumptions.

    BatchNorm in train mode couples the samples of a batch through batch statistics and mutates
    running buffers; dropout in train mode makes the network output random. Both violate the
    setting of theory/alignment.md (a deterministic per-input network f_theta(x)).

    Raises:
        InputError: naming the first BatchNorm or Dropout submodule in train mode.

    """
    _raise_if_training(module, _stateful_submodules(module))


class FunctionalModel:
    """A module seen as ``f(theta, x)`` with ``theta`` one flat vector of its trainable parameters.

    Args:
        module: any ``nn.Module`` mapping a batch of inputs to outputs of shape ``(N, ..., k)``.
            Only parameters with ``requires_grad=True`` are part of ``theta``; buffers and frozen
            parameters are read from the module as they are.

    Raises:
        InputError: if the module has no trainable parameters, or has BatchNorm/Dropout in train
            mode. The mode is checked again at every evaluation (``__call__``, ``as_function``),
            before the module runs, so a module switched to ``train()`` after wrapping is
            refused too; the engine never changes the module's mode or buffers itself.

    """

    def __init__(self, module: nn.Module) -> None:
        """Check ``module`` (eval mode, trainable parameters of one dtype and device); record their layout."""
        if not isinstance(module, nn.Module):
            raise InputError(f"expected a torch.nn.Module, got {type(module).__name__}")
        # Found once (a cheap list); their ``training`` flags are read at every evaluation.
        self._stateful = _stateful_submodules(module)
        _raise_if_training(module, self._stateful)
        self.module = module
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise InputError("the module has no trainable parameters (requires_grad=True)")
        self.names: list[str] = [n for n, _ in named]
        self.shapes: list[torch.Size] = [p.shape for _, p in named]
        self.sizes: list[int] = [math.prod(s) for s in self.shapes]
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) > 1 or len(devices) > 1:
            raise InputError(
                f"all trainable parameters must share one dtype and device, found {dtypes} on "
                f"{devices}; call model.to(dtype, device) first"
            )
        self.dtype: torch.dtype = dtypes.pop()
        self.device: torch.device = devices.pop()

    @property
    def num_params(self) -> int:
        """P, the number of trainable scalars (the length of theta)."""
        return sum(self.sizes)

    def flat_params(self) -> Tensor:
        """The module's current trainable parameters as one detached flat vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self._trainable()]).clone()

    def _trainable(self) -> list[Tensor]:
        params = dict(self.module.named_parameters())
        return [params[n] for n in self.names]

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into named views shaped like the parameters."""
        if theta.ndim != 1 or theta.numel() != self.num_params:
            raise InputError(
                f"parameter vector has shape {tuple(theta.shape)}, expected ({self.num_params},) "
                "for this model"
            )
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        """Concatenate named tensors (same names/shapes as the parameters) into one flat vector."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise InputError(
                f"parameter dict lacks {missing[:3]}{'...' if len(missing) > 3 else ''}"
            )
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def load(self, theta: Tensor) -> None:
        """Write a flat vector into the module's parameters in place."""
        with torch.no_grad():
            for p, c in zip(self._trainable(), self.unflatten(theta).values()):
                p.copy_(c)

    def __call__(self, theta: Tensor, inputs: Tensor) -> Tensor:
        """Evaluate ``f_theta(inputs)``; differentiable in ``theta`` by reverse and forward mode.

        Returns:
            The module's outputs with its parameters replaced by ``theta``.

        Raises:
            InputError: if a BatchNorm/Dropout submodule is in train mode now (checked before
                the module runs, so its running statistics are never touched).

        """
        _raise_if_training(self.module, self._stateful)
        return functional_call(self.module, self.unflatten(theta), (inputs,))

    def as_function(self, inputs: Tensor) -> Callable[[Tensor], Tensor]:
        """``theta -> f_theta(inputs)`` for a fixed batch: the map torch.func.jvp/vjp differentiate.

        Returns:
            The function of theta alone.

        Raises:
            InputError: if a BatchNorm/Dropout submodule is in train mode (now, and again at
                every evaluation of the returned function).

        """
        _raise_if_training(self.module, self._stateful)
        return lambda theta: self(theta, inputs)
