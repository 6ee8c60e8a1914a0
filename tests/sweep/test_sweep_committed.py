"""The committed default sweep (experiments/results/init_distance) is reproducible from its config."""

import math
from pathlib import Path

import pytest

from sublim_theory.sweep import (
    DEFAULT_CONFIG,
    expand_jobs,
    load_config,
    read_table,
    run_configuration,
)

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results" / "init_distance"
# Each value is a short chain of float64 operations on O(1) quantities; a different CPU kernel
# (ATEN_CPU_CAPABILITY) reorders sums and changes the last bits. Cosines are bounded by 1, so an
# absolute 1e-9 leaves about 6 digits for cancellation; the other columns compare relatively.
COLUMNS = (
    "cos_exact_teacher",
    "cos_first_order_teacher",
    "cos_first_order_expected",
    "init_distance_rel",
    "A",
    "norm_exact",
)


@pytest.fixture(scope="module")
def committed():
    return read_table(RESULTS / "sweep.csv")


@pytest.mark.parametrize(
    ("arch", "placement", "scale"),
    [("mlp", "scaled_noise", 0.01), ("cnn", "independent", 1.0), ("resmlp", "shared", 0.0)],
)
def test_committed_rows_are_reproduced(committed, arch, placement, scale):
    (job,) = [
        j
        for j in expand_jobs(load_config(DEFAULT_CONFIG), "cpu")
        if (j["arch"], j["placement"], j["scale"], j["eps"]) == (arch, placement, scale, 1e-3)
    ]
    fresh = run_configuration(job)
    old = [r for r in committed if r["key"] == job["key"]]
    assert len(old) == len(fresh) > 0
    for a, b in zip(old, fresh):
        assert (a["seed"], a["measurement"], a["step"]) == (b["seed"], b["measurement"], b["step"])
        for column in COLUMNS:
            value = b.get(column)  # a trajectory row has no one-step columns
            if a[column] is None or math.isnan(a[column]):
                assert value is None or math.isnan(value), column
            elif column.startswith("cos"):
                assert value == pytest.approx(a[column], abs=1e-9), column
            else:
                assert value == pytest.approx(a[column], rel=1e-9), column
