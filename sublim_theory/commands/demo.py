"""``sublim-theory demo``: the main job of ``make run``, on embedded defaults, in about two minutes.

1. the one-step check for every architecture x loss (table + check.json);
2. the machine-checked derivation exported as LaTeX and Markdown (derivation/);
3. the default init-distance sweep and its figures (sweep/).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sublim_theory.architectures import ARCHITECTURES
from sublim_theory.commands.check import check, format_table
from sublim_theory.errors import InputError
from sublim_theory.losses import LOSSES

HELP = "run the main job: check every architecture and loss, export the derivation, sweep and plot"
DEFAULT_SWEEP = (
    Path(__file__).resolve().parents[2] / "experiments" / "configs" / "init_distance.toml"
)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("out"), help="output folder (default: out)"
    )
    parser.add_argument("--eps", type=float, default=1e-4, help="teacher step for the check table")
    parser.add_argument(
        "--sweep-config",
        type=Path,
        default=DEFAULT_SWEEP,
        help="sweep configuration (default: experiments/configs/init_distance.toml)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda for the sweep")


def run(args: argparse.Namespace) -> int:
    from sublim_theory.plotting import plot_sweep
    from sublim_theory.sweep import run_sweep
    from sublim_theory.symbolic import export

    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create output folder {out}: {error.strerror}") from error
    start = time.perf_counter()

    print(f"[1/3] one-step alignment check, eps = {args.eps:g}, float64")
    rows = [
        {"arch": arch, **check(arch, loss, args.eps).to_dict()}
        for arch in ARCHITECTURES
        for loss in sorted(LOSSES)
    ]
    print(format_table(rows))
    (out / "check.json").write_text(json.dumps(rows, indent=2) + "\n")

    print("\n[2/3] derivation: every step checked by sympy")
    for path in export(out / "derivation"):
        print(f"  wrote {path}")

    print(f"\n[3/3] init-distance sweep: {args.sweep_config}")
    table = run_sweep(args.sweep_config, out / "sweep", device=args.device)
    print(f"  table: {table}")
    for path in plot_sweep(out / "sweep"):
        print(f"  figure: {path}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s; results in {out}/")
    return 0
