"""What every experiment records beside its numbers: a 95% interval and the environment.

One implementation for the sweeps, the MNIST and numbers experiments and the benchmarks, so a
"95% CI" or an ``environment.json`` means the same thing everywhere.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "PACKAGES",
    "environment_record",
    "git_revision",
    "interval_text",
    "mean_interval",
    "package_versions",
    "restore_nan",
]

PACKAGES = (
    "sublim-theory",
    "torch",
    "numpy",
    "scipy",
    "sympy",
    "matplotlib",
    "transformers",
    "ray",
)


def mean_interval(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided 95% Student-t interval, n) over the finite values.

    The half-width is t_{0.975, n-1} * s / sqrt(n) with s the sample standard deviation; it is
    NaN for n < 2 (and the mean is NaN for n = 0). None, NaN and inf values are dropped.

    Returns:
        ``(mean, half-width, n)``; NaN mean and half-width when n = 0, NaN half-width when n = 1.

    """
    finite = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = int(finite.size)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(finite[0]), math.nan, 1
    from scipy.special import stdtrit  # imported here: scipy costs start-up time

    half = float(stdtrit(n - 1, 0.975)) * float(finite.std(ddof=1)) / math.sqrt(n)
    return float(finite.mean()), half, n


def interval_text(mean: float, half: float, digits: int = 3) -> str:
    """``"mean [mean - half, mean + half]"`` to ``digits`` decimals; ``"mean"`` alone when half is NaN.

    The one way the result tables print a mean with its :func:`mean_interval` half-width.

    Returns:
        The text.

    """
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def restore_nan(value: Any) -> Any:
    """Undo JSON's NaN -> null (``runs.atomic_write_json``) in a stored result: null -> NaN.

    For records whose nulls all stand for NaN (measured numbers); settings that may be None
    on purpose are kept apart and not passed through here.

    Returns:
        ``value`` with every None (in lists and dicts too) replaced by NaN.

    """
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {key: restore_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [restore_nan(item) for item in value]
    return value


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def environment_record(device: str = "cpu", **extra: Any) -> dict[str, Any]:
    """Machine, device, thread count, package versions and git revision, plus ``extra`` keys."""
    on_cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if on_cuda else platform.processor(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "git_revision": git_revision(),
        **extra,
    }
