"""The expected-offset prediction K(eps v - E[Delta]) of the sweep against the engine's own
kernel (issue 24 item 7: its sign went unchecked; E[Delta] is zero except for the independent
placements, where it is -theta_0 on the randomly drawn coordinates)."""

import pytest
import torch.nn.functional as F

from sublim_theory.engine.alignment import TeacherTask, gauss_newton_product
from sublim_theory.engine.losses import make_loss
from sublim_theory.studies.init_distance import (
    TINY_CONFIG,
    expand_jobs,
    load_config,
    prepare_configuration,
    run_configuration,
)

# float64: the sweep's vmapped K and the engine's single K agree to rounding
# (tests/studies/init_distance/test_sweep.py)
RTOL = 1e-9


def test_expected_offset_prediction_equals_the_engine_kernel():
    job = next(
        j
        for j in expand_jobs(load_config(TINY_CONFIG), "cpu")
        if j["arch"] == "mlp" and j["placement"] == "independent"
    )
    rows = [r for r in run_configuration(job) if r["measurement"] == "one_step"]
    problem = prepare_configuration(job)
    model, loss, eps = problem.model, make_loss(job["measure"]["loss"]), job["eps"]
    for i, row in enumerate(rows):
        theta0, inputs = problem.theta0[i], problem.x_student[i]
        v = TeacherTask(F.cross_entropy, problem.x_teacher[i], problem.labels[i]).update(
            model, theta0
        )
        mean = problem.expected_offset[i]
        assert float(mean.norm()) > 0.1 * float(theta0.norm())  # the offset term matters here
        predicted = gauss_newton_product(model, theta0, inputs, loss, eps * v - mean)
        inner = float(predicted.double() @ v.double())
        cosine = inner / float(predicted.double().norm() * v.double().norm())
        scale = float(predicted.norm() * v.norm())
        assert row["inner_first_order_expected"] == pytest.approx(inner, abs=RTOL * scale)
        assert row["cos_first_order_expected"] == pytest.approx(cosine, abs=RTOL)
