import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from sublim_theory.harness.records import environment_record, interval_text, mean_interval


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_mean_interval_half_width_is_the_student_t_quantile(n):
    values = np.random.default_rng(n).normal(3.0, 2.0, n)
    mean, half, count = mean_interval(list(values) + [float("nan"), None, float("inf")])
    assert count == n
    assert mean == pytest.approx(values.mean(), rel=1e-14)
    expected = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    assert half == pytest.approx(expected, rel=1e-12)


def test_mean_interval_covers_the_true_mean_95_percent_of_the_time():
    """Coverage over 4000 seeded samples of size 4: 0.95 +- 4 binomial sd (0.0034).

    A normal quantile (1.96) instead of t_{0.975, 3} (3.18) would cover only ~0.86.
    """
    rng = np.random.default_rng(0)
    trials, size = 4000, 4
    hits = 0
    for sample in rng.normal(1.0, 1.0, (trials, size)):
        mean, half, _ = mean_interval(sample.tolist())
        hits += abs(mean - 1.0) <= half
    sd = math.sqrt(0.95 * 0.05 / trials)
    assert abs(hits / trials - 0.95) < 4 * sd, hits / trials


def test_mean_interval_edge_cases():
    assert math.isnan(mean_interval([5.0])[1]) and mean_interval([5.0])[0] == 5.0
    mean, half, n = mean_interval([])
    assert n == 0 and math.isnan(mean) and math.isnan(half)


def test_environment_record_names_versions_and_extra_keys():
    record = environment_record("cpu", config={"a": 1})
    assert record["packages"]["torch"] == torch.__version__  # metadata vs the module itself
    assert record["config"] == {"a": 1} and record["device"] == "cpu"
    assert record["torch_threads"] == torch.get_num_threads()


def test_git_revision_is_this_checkouts_head():
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%H"], capture_output=True, text=True
    ).stdout.strip()
    revision = environment_record("cpu")["git_revision"]
    assert re.fullmatch("[0-9a-f]{40}", revision) and revision == head


def test_interval_text_prints_the_mean_and_its_bounds_or_the_mean_alone():
    mean, half, _ = mean_interval([0.1, 0.2, 0.3, 0.6])
    assert interval_text(mean, half) == f"0.300 [{mean - half:.3f}, {mean + half:.3f}]"
    assert interval_text(0.5, 0.125, digits=2) == "0.50 [0.38, 0.62]"
    assert interval_text(0.5, math.nan) == "0.500"
