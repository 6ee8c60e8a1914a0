"""Where the student starts: shared init, perturbed, interpolated, independent, or mixed per layer.

theory/alignment.md section 5: with theta_S0 = theta_0 + Delta the first-order update is
K (eps v - Delta); the student is pulled back toward theta_0 as much as toward the teacher.
Every placement returns a flat vector theta_S0; ``init_distance`` reports how far it is, and
``expected_offset`` the mean of Delta over the placement's randomness given theta_0.

Kinds (``place_student``):
    shared        theta_0 itself (the theorem's setting);
    noise         theta_0 + scale * N(0, I)                       (absolute sigma);
    scaled_noise  theta_0 + scale * std(tensor) * N(0, I) per tensor (the paper's "s x std");
    interpolate   (1 - scale) theta_0 + scale theta_indep          (t = scale in [0, 1]);
    independent   theta_indep, a fresh init of the same module from another seed;
    share_body    theta_0 everywhere except the head, which comes from theta_indep;
    share_head    theta_indep everywhere except the head, which comes from theta_0.
The head is the last submodule that owns trainable parameters (override with ``head_prefix``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.errors import InputError

__all__ = [
    "INDEPENDENT_OFFSET",
    "INDEPENDENT_PLACEMENTS",
    "PLACEMENTS",
    "expected_offset",
    "head_names",
    "independent_init",
    "init_distance",
    "place_student",
]

# the independent init of seed s: harness.seeds' zoo.independent_init (the engine does not import
# the harness; tests/harness/test_seeds.py checks the two agree)
INDEPENDENT_OFFSET = 1_000_003

PLACEMENTS = (
    "shared",
    "noise",
    "scaled_noise",
    "interpolate",
    "independent",
    "share_body",
    "share_head",
)


def independent_init(model: FunctionalModel, seed: int) -> Tensor:
    """A fresh initialization of the same architecture (every ``reset_parameters``), from ``seed``."""
    clone = copy.deepcopy(model.module)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return FunctionalModel(clone).flat_params().to(model.dtype)


def _noise_generator(seed: int) -> torch.Generator:
    """A generator whose stream is unrelated to ``torch.manual_seed(seed)``.

    Models are usually initialized with ``torch.manual_seed(seed)``; noise drawn from the same
    seed would replay the init's own random numbers and correlate Delta with theta_0.

    Returns:
        A CPU generator seeded from a mix of ``seed``.

    """
    mixed = int(np.random.SeedSequence([seed, 0x5EED_B0D7]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(mixed % 2**63)


def head_names(model: FunctionalModel, head_prefix: str | None = None) -> list[str]:
    """Names of the head's parameters: those under ``head_prefix``, else the last parameterized module."""
    if head_prefix is None:
        owners = [name.rsplit(".", 1)[0] if "." in name else "" for name in model.names]
        head_prefix = owners[-1]
    names = [n for n in model.names if n == head_prefix or n.startswith(head_prefix + ".")]
    if not names:
        raise InputError(f"no trainable parameter is under the head prefix '{head_prefix}'")
    return names


def _mask(model: FunctionalModel, names: list[str]) -> Tensor:
    wanted = set(names)
    pieces = [
        torch.full((size,), name in wanted, dtype=torch.bool)
        for name, size in zip(model.names, model.sizes)
    ]
    return torch.cat(pieces).to(model.device)


def place_student(
    model: FunctionalModel,
    theta0: Tensor,
    kind: str,
    scale: float = 0.0,
    seed: int = 0,
    *,
    independent: Tensor | None = None,
    head_prefix: str | None = None,
) -> Tensor:
    """The student's init theta_S0 for a placement ``kind`` (see the module docstring).

    Args:
        model: the functional model (gives parameter names and shapes).
        theta0: the shared init theta_0 (the teacher's base).
        kind: one of ``PLACEMENTS``.
        scale: sigma for ``noise``, s for ``scaled_noise``, t for ``interpolate``; must be >= 0.
        seed: seeds the noise and, when ``independent`` is not given, the independent init.
            The noise stream is mixed from ``seed``, so it is unrelated to the stream of
            ``torch.manual_seed(seed)`` that may have initialized theta_0 (the same stream
            would correlate Delta with theta_0 and bias d^T K v away from zero).
        independent: theta_indep for the kinds that need it (default: ``independent_init``).
        head_prefix: which parameters form the head for ``share_body``/``share_head``.

    Returns:
        theta_S0, a new flat tensor like ``theta0``.

    Raises:
        InputError: an unknown kind, a negative scale, or t outside [0, 1] for ``interpolate``.

    """
    if kind not in PLACEMENTS:
        raise InputError(f"unknown student placement '{kind}'; choose one of {list(PLACEMENTS)}")
    if not scale >= 0:
        raise InputError(f"placement scale (distance) must be >= 0, got {scale}")
    if kind == "interpolate" and scale > 1:
        raise InputError(f"interpolation t must lie in [0, 1], got {scale}")
    if kind == "shared":
        return theta0.clone()
    generator = _noise_generator(seed)
    if kind in ("noise", "scaled_noise"):
        noise = torch.randn(theta0.numel(), generator=generator, dtype=torch.float64)
        noise = noise.to(device=theta0.device, dtype=theta0.dtype)
        if kind == "scaled_noise":
            stds = [
                c.std() if c.numel() > 1 else torch.zeros((), dtype=c.dtype, device=c.device)
                for c in torch.split(theta0, model.sizes)
            ]
            noise = noise * torch.cat([s.expand(n) for s, n in zip(stds, model.sizes)])
        return theta0 + scale * noise
    other = (
        independent
        if independent is not None
        else independent_init(model, seed + INDEPENDENT_OFFSET)
    )
    if kind == "interpolate":
        return (1 - scale) * theta0 + scale * other
    if kind == "independent":
        return other.clone()
    head = _mask(model, head_names(model, head_prefix))
    if kind == "share_body":
        return torch.where(head, other, theta0)
    return torch.where(head, theta0, other)  # share_head


# Placements that take coordinates from an independent init theta_indep: their offset Delta has a
# non-zero mean given theta_0 (``expected_offset``).
INDEPENDENT_PLACEMENTS = ("interpolate", "independent", "share_body", "share_head")


def expected_offset(
    model: FunctionalModel,
    theta0: Tensor,
    kind: str,
    scale: float = 0.0,
    *,
    independent: Tensor,
    head_prefix: str | None = None,
) -> Tensor:
    """E[Delta | theta_0], Delta = theta_S0 - theta_0, over the placement's randomness.

    Hypothesis (true of PyTorch's default initializers and of GPT-2's): each coordinate of an
    init is either a constant (norm gains 1, zero biases) or drawn, independently of theta_0,
    from a distribution symmetric about 0. Then E[theta_indep] = m with m_i = theta_0,i on the
    constant coordinates and 0 on the random ones, told apart by one draw ``independent``
    (theta_indep differs from theta_0 exactly on the random coordinates, almost surely). Every
    placement is affine in theta_indep, so E[Delta | theta_0] is the placement of m minus theta_0:
    -theta_0 on the random coordinates for ``independent``, t times that for ``interpolate``, the
    head's or the body's part for ``share_body``/``share_head``. The noise placements add
    zero-mean noise, so their mean offset is 0, as is ``shared``'s.

    Returns:
        E[Delta | theta_0], a flat tensor like ``theta0``.

    Raises:
        InputError: an unknown kind.

    """
    if kind not in PLACEMENTS:
        raise InputError(f"unknown student placement '{kind}'; choose one of {list(PLACEMENTS)}")
    if kind not in INDEPENDENT_PLACEMENTS:
        return torch.zeros_like(theta0)
    mean = torch.where(independent == theta0, theta0, torch.zeros_like(theta0))
    placed = place_student(model, theta0, kind, scale, independent=mean, head_prefix=head_prefix)
    return placed - theta0


def init_distance(theta_student: Tensor, theta0: Tensor) -> tuple[float, float]:
    """(||theta_S0 - theta_0||, ||theta_S0 - theta_0|| / ||theta_0||), in float64."""
    absolute = float(torch.linalg.vector_norm((theta_student - theta0).double()))
    return absolute, absolute / float(torch.linalg.vector_norm(theta0.double()))
