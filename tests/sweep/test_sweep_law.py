"""The init-distance analysis as the data shows it (theory/alignment.md section 5).

Primary prediction: dtheta_S ~= K(eps v - Delta) per seed. At an independent init the mean of
Delta given theta_0 is -P theta_0 (P: the randomly initialized coordinates), so the first-order
alignment has mean eps A + (P theta_0)^T K v, not eps A: the negative mean cosine of independent
inits comes from (P theta_0)^T K v < 0.
"""

import pytest

from sublim_theory.records import mean_interval
from sublim_theory.sweep import expand_jobs, run_configuration, validate_config

SEEDS = 48  # enough for 95% intervals that separate the effects below (each run < 1 s)


def _independent_rows(arch):
    config = validate_config(
        {
            "grid": {
                "architectures": [arch],
                "eps": [1e-3],
                "seeds": SEEDS,
                "placements": {"independent": [1.0]},
            },
            "model": {"width": 8, "depth": 2},
            "measure": {"n_inputs": 16, "n_teacher_inputs": 16},
            "trajectory": {"steps": 0},
        }
    )
    (job,) = expand_jobs(config, "cpu")
    return run_configuration(job)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_independent_init_alignment_is_the_mean_offset_term(arch):
    rows = _independent_rows(arch)
    # The theta_0 term (P theta_0)^T K v = -<K E[Delta], v> is negative on average ...
    offset, offset_ci, n = mean_interval(r["inner_mean_offset"] for r in rows)
    assert n == SEEDS and offset + offset_ci < 0
    # ... and it is all the first order has on average: the rest of Delta, theta_indep - m,
    # is independent of theta_0 and symmetric, so its term averages out (95% interval holds 0).
    rest, rest_ci, _ = mean_interval(
        r["inner_first_order"] - r["inner_first_order_expected"] for r in rows
    )
    assert abs(rest) <= rest_ci
    # The first-order cosine is negative on average, and so is the measured one.
    for column in ("cos_first_order_expected", "cos_first_order_teacher", "cos_exact_teacher"):
        mean, ci, _ = mean_interval(r[column] for r in rows)
        assert mean + ci < 0, column
