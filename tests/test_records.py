import math

import pytest
import torch

from sublim_theory.records import environment_record, mean_interval


def test_mean_interval_is_the_student_t_interval():
    mean, half, n = mean_interval([1.0, 2.0, 3.0, float("nan"), None, float("inf")])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(
        4.302652729911275 * 1.0 / math.sqrt(3)
    )  # t_{0.975, 2} * s / sqrt(3)
    assert math.isnan(mean_interval([5.0])[1])
    assert mean_interval([])[2] == 0


def test_environment_record_names_versions_and_extra_keys():
    record = environment_record("cpu", config={"a": 1})
    assert (
        record["packages"]["torch"] == torch.__version__.split("+")[0]
        or record["packages"]["torch"]
    )
    assert record["config"] == {"a": 1} and record["device"] == "cpu"
    assert record["git_revision"] is None or len(record["git_revision"]) == 40
