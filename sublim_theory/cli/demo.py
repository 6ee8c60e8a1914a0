"""``sublim-theory demo``: the main job of ``make run``, on embedded defaults, in about two minutes.

1. the one-step check for every architecture x loss (table + check.json);
2. the machine-checked derivation exported as LaTeX and Markdown (derivation/);
3. the default init-distance sweep and its figures (sweep/).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from sublim_theory.cli.main import add_config_argument, add_device_argument
from sublim_theory.engine.losses import LOSSES
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import (
    CONFIG_DIR,
    OutputFolder,
    atomic_write_json,
    load_toml,
    resolve_device,
)
from sublim_theory.models.architectures import ARCHITECTURES
from sublim_theory.studies.check import check, format_table

__all__ = [
    "DEFAULT_SWEEP",
    "HELP",
    "progress",
    "register",
    "run",
]

HELP = "run the main job: check every architecture and loss, export the derivation, sweep and plot"
DEFAULT_SWEEP = CONFIG_DIR / "init_distance.toml"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` flags to ``parser``."""
    parser.add_argument(
        "--out", type=Path, default=Path("out"), help="output folder (default: out)"
    )
    parser.add_argument("--eps", type=float, default=1e-4, help="teacher step for the check table")
    add_config_argument(parser, default=DEFAULT_SWEEP, aliases=("--sweep-config",))
    add_device_argument(parser)  # for the sweep


def progress(message: str) -> None:
    """A progress line, on stderr (the results go to files and stdout)."""
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Check every argument and the output folder, then run the three steps.

    Returns:
        0 on success.

    Raises:
        InputError: for a bad step, device, sweep configuration or output folder, before the
            first step runs.

    """
    from sublim_theory.studies.init_distance import run_sweep
    from sublim_theory.studies.init_distance.plot import plot_sweep
    from sublim_theory.symbolic import export_documents

    if not (math.isfinite(args.eps) and args.eps > 0 and math.isfinite(args.eps * args.eps)):
        raise InputError(
            f"--eps must be a finite number > 0 whose square is finite, got {args.eps}"
        )
    device = resolve_device(args.device).type
    load_toml(args.config)  # a missing or broken sweep file fails now, not after step 2
    with OutputFolder(args.out, "demo") as folder:
        out = folder.path
        start = time.perf_counter()

        progress(f"[1/3] one-step alignment check, eps = {args.eps:g}, float64")
        rows = [
            {"arch": arch, **check(arch, loss, args.eps).to_dict()}
            for arch in ARCHITECTURES
            for loss in sorted(LOSSES)
        ]
        print(format_table(rows))
        atomic_write_json(out / "check.json", rows)

        progress("\n[2/3] derivation: every step checked by sympy")
        for path in export_documents(out / "derivation"):
            progress(f"  wrote {path}")

        progress(f"\n[3/3] init-distance sweep: {args.config}")
        table = run_sweep(args.config, out / "sweep", device=device)
        print(f"table: {table}")
        for path in plot_sweep(out / "sweep"):
            print(f"figure: {path}")
        progress(f"\ndone in {time.perf_counter() - start:.0f} s; results in {out}/")
    return 0
