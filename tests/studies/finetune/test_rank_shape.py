"""The pre-stated inverted-U test over LoRA ranks (``report.rank_shape``), against hand sums."""

import math

import pytest
from scipy import stats

from sublim_theory.errors import InputError
from sublim_theory.studies.finetune import report

RANKS = (1, 2, 4, 8, 16, 32)
NOISE = (0.003, -0.002, 0.001, -0.004, 0.002, 0.0)  # per-seed offsets, one per seed


def _curve(means: dict[int, float], jitter: float = 0.001) -> dict[int, dict[int, float]]:
    """``{rank: {seed: mean + seed offset + a rank-and-seed jitter}}`` (deterministic)."""
    return {
        r: {s: m + NOISE[s] + jitter * ((3 * s + k) % 5 - 2) for s in range(len(NOISE))}
        for k, (r, m) in enumerate(means.items())
    }


def _t_interval(gaps: list[float]) -> tuple[float, float]:
    """Mean and 95% t half-width, written out (scipy's t quantile, numpy-free sums)."""
    n = len(gaps)
    mean = sum(gaps) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1))
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def test_clear_inverted_u_is_declared_and_its_contrasts_match_hand_sums():
    per_seed = _curve({1: 0.02, 2: 0.05, 4: 0.09, 8: 0.06, 16: 0.04, 32: 0.03})
    shape = report.rank_shape(per_seed)
    assert shape["peak"] == 4 and shape["inverted_u"]
    assert shape["verdict"].startswith("inverted U within r <= 32")
    seeds = range(len(NOISE))
    for name, gaps in (
        ("concavity", [per_seed[4][s] - (per_seed[2][s] + per_seed[8][s]) / 2 for s in seeds]),
        ("fall", [per_seed[4][s] - per_seed[32][s] for s in seeds]),
        ("rise", [per_seed[4][s] - per_seed[1][s] for s in seeds]),
    ):
        mean, half = _t_interval(gaps)
        assert shape[name]["mean"] == pytest.approx(mean, abs=1e-14)
        assert shape[name]["half"] == pytest.approx(half, rel=1e-12)
        assert shape[name]["n"] == 6 and shape[name]["above"] == sum(g > 0 for g in gaps)


def test_peak_at_the_top_rank_is_no_inverted_u():
    shape = report.rank_shape(_curve({r: 0.01 * k for k, r in enumerate(RANKS)}))
    assert shape["peak"] == 32 and not shape["inverted_u"]
    assert shape["concavity"] is None and shape["fall"] is None
    assert shape["verdict"] == (
        "no inverted U within r <= 32: the mean peaks at the top rank r = 32"
    )


def test_interior_peak_without_a_resolved_fall_names_the_failing_condition():
    # a peak at 16 only 0.002 above r = 32, inside the seeds' jitter: F's interval covers 0
    shape = report.rank_shape(
        _curve({1: 0.02, 2: 0.04, 4: 0.06, 8: 0.08, 16: 0.100, 32: 0.098}, jitter=0.004)
    )
    assert shape["peak"] == 16 and not shape["inverted_u"]
    fall = shape["fall"]
    assert fall["mean"] - fall["half"] <= 0
    assert "F interval" in shape["verdict"] and "no inverted U detected" in shape["verdict"]


def test_peak_at_the_smallest_rank_and_too_few_ranks():
    shape = report.rank_shape(_curve({1: 0.05, 4: 0.03, 16: 0.01}))
    assert shape["peak"] == 1 and shape["rise"] is None and not shape["inverted_u"]
    assert "bottom rank r = 1" in shape["verdict"]
    with pytest.raises(InputError, match=">= 3 LoRA ranks"):
        report.rank_shape(_curve({1: 0.01, 4: 0.02}))


def test_format_table_prints_the_test_per_optimizer():
    per_seed = _curve({1: 0.02, 2: 0.05, 4: 0.09, 8: 0.06, 16: 0.04, 32: 0.03})
    rows = [
        {
            "seed": s,
            "cell": f"adam/r{r}",
            "optimizer": "adam",
            "parameterization": f"r{r}",
            "role": "paired",
            "metric": "diff_p_trait",
            "value": v,
        }
        for r, by_seed in per_seed.items()
        for s, v in by_seed.items()
    ]
    table = report.format_table(rows, {f"adam/r{r}": 1e-3 for r in RANKS}, [])
    line = next(x for x in table.splitlines() if x.startswith("| adam | r4 |"))
    assert "inverted U within r <= 32" in line
