"""The ``bench`` command's one entry point: which rows to run, and the table it prints.

Three selections, each written into the same output folder:

* the default rows (alignment paths per gradient, curvlinops, vmap over seeds, the MNIST step,
  and the screen rows for the K of ``screen_traits``): ``experiment.run_benchmarks`` writes
  ``bench.{json,md}``;
* ``screen_only``: the screen rows alone (no alignment paths, seeds or MNIST rows), same files;
* ``real``: the real-model rows alone (``real.run_real_benchmarks``): ``bench_real.{json,md}``
  beside, never over, ``bench.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sublim_theory.errors import InputError
from sublim_theory.studies.bench.experiment import run_benchmarks
from sublim_theory.studies.bench.real import run_real_benchmarks

__all__ = ["run_bench"]


def run_bench(
    out_dir: str | Path,
    *,
    size: str = "default",
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("float32", "float64"),
    archs: tuple[str, ...] = ("mlp", "cnn", "transformer"),
    n_seeds: int = 32,
    mnist_models: int = 10,
    runs: int = 2,
    threads: int = 0,
    screen_traits: tuple[int, ...] = (),
    screen_only: bool = False,
    real: bool = False,
    real_model: str | os.PathLike = "smollm2-135m-instruct",
    real_cache: str | os.PathLike | None = None,
) -> tuple[list[Path], str]:
    """Run the selected benchmark rows; return the files written and the Markdown table.

    Args:
        out_dir: the output folder.
        size: a benchmark size (``experiment.SIZES``; with ``real``, ``real.REAL_SIZES``).
        device: cpu, cuda or auto.
        dtypes: dtypes of the alignment rows.
        archs: architectures of the alignment rows.
        n_seeds: seeds of the vmap-vs-loop row (0 skips it).
        mnist_models: models of the MNIST step row (0 skips it).
        runs: runs one after the other (a target is met only if met in every run).
        threads: torch CPU threads (0: torch's default).
        screen_traits: K of the screen rows (empty skips them).
        screen_only: run the screen rows alone.
        real: run the real-model rows alone.
        real_model: with ``real``: a packaged name, a ``.gguf`` file or a ``transformers``
            directory.
        real_cache: with ``real``: where a GGUF's dequantized weights are kept.

    Returns:
        (paths of the JSON record, the environment record and the table; the table's text).

    Raises:
        InputError: ``real`` with ``screen_only`` (and as the functions it calls).

    """
    if real and screen_only:
        raise InputError("--real and --screen-only select different rows; pass one of them")
    if real:
        paths = run_real_benchmarks(out_dir, real_model, size, device, runs, threads, real_cache)
    else:
        paths = run_benchmarks(
            out_dir,
            size,
            device,
            tuple(dtypes),
            () if screen_only else tuple(archs),
            0 if screen_only else n_seeds,
            0 if screen_only else mnist_models,
            runs,
            threads,
            tuple(screen_traits),
        )
    return paths, Path(paths[2]).read_text()
