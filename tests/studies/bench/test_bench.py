import json

import pytest
import torch

from sublim_theory.engine.alignment import gauss_newton_product
from sublim_theory.engine.losses import SoftCrossEntropy
from sublim_theory.errors import InputError
from sublim_theory.studies.bench.experiment import (
    SIZES,
    build_case,
    curvlinops_matvec,
    run_benchmarks,
)
from sublim_theory.studies.bench.report import combine_runs, verdicts
from sublim_theory.testing.asserts import assert_allclose


def test_tiny_benchmark_writes_tables_with_ratios(tmp_path):
    paths = run_benchmarks(
        tmp_path, "tiny", "cpu", ("float64",), ("mlp", "transformer"), 4, 2, runs=1
    )
    record = json.loads(paths[0].read_text())
    rows = {(r["arch"], r["path"]): r for r in record["rows"]}
    assert rows[("mlp", "gradient")]["ratio"] == 1.0
    for path in ("first_order", "gauss_newton", "report", "explicit_jacobian"):
        assert rows[("mlp", path)]["ratio"] > 0
    assert {v["path"] for v in record["verdicts"]} >= {
        "first_order",
        "gauss_newton",
        "seeds_loop_over_vmap",
    }
    assert "| mlp | float64 | cpu |" in paths[2].read_text()
    assert (
        json.loads(paths[1].read_text())["packages"]["torch"].split("+")[0]
        == torch.__version__.split("+")[0]
    )


def test_verdicts_mark_targets_honestly():
    rows = [{"path": "first_order", "ratio": 1.3}, {"path": "seeds_loop_over_vmap", "ratio": 3.5}]
    assert [v["met"] for v in verdicts(rows)] == [False, True]
    assert [v["met"] for v in verdicts([{"path": "report", "ratio": r} for r in (3.9, 4.1)])] == [
        True,
        False,
    ]


def test_a_target_is_met_only_when_every_run_meets_it():
    base = {"arch": "mlp", "dtype": "float32", "batch": 8, "seconds": 1.0, "load": 0.5}
    rows = [
        {**base, "path": "gauss_newton", "ratio": 1.7, "run": 1},
        {**base, "path": "gauss_newton", "ratio": 1.9, "run": 2},
        {**base, "path": "first_order", "ratio": 1.0, "run": 1},
        {**base, "path": "first_order", "ratio": 1.1, "run": 2},
        {**base, "path": "report", "ratio": 4.5, "run": 1},
        {**base, "path": "report", "ratio": 4.2, "run": 2},
    ]
    combined = {entry["path"]: entry for entry in combine_runs(rows)}
    assert combined["gauss_newton"]["met"] == "mixed (1/2)"
    assert combined["gauss_newton"]["ratio"] == [1.7, 1.9]
    assert combined["first_order"]["met"] == "yes"
    assert combined["report"]["met"] == "NO"


def test_two_runs_give_one_table_row_per_measurement(tmp_path):
    threads = torch.get_num_threads()
    paths = run_benchmarks(tmp_path, "tiny", "cpu", ("float64",), ("mlp",), 0, 0, 2, threads=1)
    assert json.loads(paths[1].read_text())["torch_threads"] == 1
    assert torch.get_num_threads() == threads  # restored
    table = paths[2].read_text()
    report = [line for line in table.splitlines() if "| report |" in line]
    assert len(report) == 1 and "<= 4.0" in report[0]
    ratios = report[0].split("|")[8]
    assert len(ratios.split(" / ")) == 2
    assert "load" in table


def test_bad_benchmark_arguments(tmp_path):
    with pytest.raises(InputError, match="unknown benchmark size"):
        run_benchmarks(tmp_path, "huge")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            run_benchmarks(tmp_path, "tiny", "cuda")
    with pytest.raises(InputError, match="tpu"):
        run_benchmarks(tmp_path, "tiny", "tpu")
    with pytest.raises(InputError, match="float16"):
        run_benchmarks(tmp_path, "tiny", "cpu", ("float16",))


def test_each_seed_measurement_is_one_row(tmp_path):
    paths = run_benchmarks(
        tmp_path, "tiny", "cpu", ("float64",), (), n_seeds=2, mnist_models=0, runs=1
    )
    rows = json.loads(paths[0].read_text())["rows"]
    assert [r["path"] for r in rows] == ["seeds_vmap[2]", "seeds_loop_over_vmap"]
    # no second row repeating a measurement under another name
    assert len({(r["seconds"], r["ratio"]) for r in rows}) == len(rows)


def test_curvlinops_ggn_equals_our_gauss_newton_product():
    """curvlinops (an independent GGN implementation) as an oracle for K v under softmax CE."""
    pytest.importorskip("curvlinops")
    case = build_case("mlp", SIZES["tiny"]["mlp"], torch.float64, "cpu")
    theta = case.model.flat_params()
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theirs = curvlinops_matvec(case, v)()
    theirs = (
        torch.cat([torch.as_tensor(t).reshape(-1) for t in theirs])
        if isinstance(theirs, list)
        else torch.as_tensor(theirs)
    )
    ours = gauss_newton_product(case.model, theta, case.inputs, SoftCrossEntropy(), v)
    assert_allclose(ours, theirs.to(ours.dtype), "K v vs curvlinops", rtol=1e-9, atol=1e-12)
