"""The sweep: its config, the oracle for every per-seed column, the table and resumption."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sublim_theory.cli.main import main
from sublim_theory.engine.alignment import TeacherTask, gauss_newton_product
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.report import AlignmentReport, alignment_report
from sublim_theory.errors import InputError
from sublim_theory.studies.init_distance import (
    COLUMNS,
    ENVIRONMENT_NAME,
    TABLE_NAME,
    completed_seeds,
    expand_jobs,
    load_config,
    prepare_configuration,
    read_table,
    rows_per_job,
    run_configuration,
    run_over_seeds,
    run_sweep,
)

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "experiments" / "configs" / "init_distance_tiny.toml"
CONFIGS = ("init_distance_tiny.toml", "init_distance.toml", "init_distance_full.toml")
# float64 rounding: the sweep and the engine form the same quantities by different but equally
# exact paths (vmapped vs single kernels, eps K v - K Delta vs K(eps v - Delta)). Each result is
# a short chain of float64 operations on O(1) numbers; 1e-9 relative leaves ~6 digits for
# cancellation in the inner products, whose terms are compared relative to ||a|| ||b||.
RTOL = 1e-9

TINY_TOML = """
[grid]
architectures = {architectures}
eps = [1e-3]
seeds = 2
[grid.placements]
shared = [0.0]
scaled_noise = {scales}
[model]
width = 6
depth = 1
[measure]
n_inputs = 8
n_teacher_inputs = 8
[trajectory]
steps = 2
sgd_lr = 0.1
"""


def _write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_sweep(tiny_config_run):
    """The session's one run of the tiny config (``tests/conftest.py``, ``TINY_RUNS``)."""
    run = tiny_config_run("init_distance_tiny")
    assert run.code == 0, run.stderr
    return run.out, run.out / TABLE_NAME


# ---------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "experiments" / "configs" / name)
    assert expand_jobs(config, "cpu")


def test_jobs_are_plain_picklable_dicts():
    import pickle

    jobs = expand_jobs(load_config(TINY), "cpu")
    assert len({job["key"] for job in jobs}) == len(jobs)
    assert pickle.loads(pickle.dumps(jobs)) == jobs


def test_the_key_names_every_setting_that_shapes_a_row(tmp_path):
    """Two model sizes never share a key, even if run.json is lost."""
    base = TINY_TOML.format(architectures='["mlp"]', scales="[0.01]")
    narrow = expand_jobs(load_config(_write(tmp_path, base, "a.toml")), "cpu")
    wide = expand_jobs(
        load_config(_write(tmp_path, base.replace("width = 6", "width = 7"), "b.toml")), "cpu"
    )
    assert len(narrow) == len(wide)
    assert not {j["key"] for j in narrow} & {j["key"] for j in wide}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('["mlp"]', '["mlp", "lstm"]'), "unknown architecture 'lstm'"),
        (lambda t: t.replace("[0.01]", "[-0.5]"), "negative distance"),
        (lambda t: t.replace('["mlp"]', "[]"), "architectures must be a non-empty list"),
        (lambda t: t.replace("eps = [1e-3]", "eps = []"), "eps must be a non-empty list"),
        (lambda t: t.replace("seeds = 2", "seeds = []"), "seeds must be a non-empty list"),
        (lambda t: t.replace("seeds = 2", "seeds = 0"), "grid.seeds = 0"),
        (lambda t: t.replace("seeds = 2", "seeds = 2.5"), "seeds must be a non-empty list"),
        (lambda t: t.replace("seeds = 2", "seeds = [1, 1]"), "grid.seeds repeats"),
        (
            lambda t: t.replace("shared = [0.0]\nscaled_noise = [0.01]", ""),
            "grid.placements is empty",
        ),
        (lambda t: t.replace("eps = [1e-3]", "eps = [0.0]"), r"eps\[0\] must be > 0"),
        (lambda t: t.replace("shared", "everywhere"), "unknown key.*everywhere"),
        (lambda t: t.replace("width = 6", "widht = 6"), "unknown key"),
        (lambda t: t.replace("width = 6", "width = 6.5"), "width must be an integer"),
        (lambda t: t.replace("width = 6", "width = true"), "width must be an integer"),
        (lambda t: t.replace("width = 6", 'width = "6"'), "width must be an integer"),
        (lambda t: t.replace("sgd_lr = 0.1", "sgd_lr = nan"), "sgd_lr must be a finite"),
        (lambda t: t + "\n[extra]\n", "unknown key.*extra"),
        (lambda t: t.replace("[grid]", "[grid"), "not valid TOML"),
        (
            lambda t: t.replace("steps = 2", "steps = 2\noptimizers = ['lbfgs']"),
            "unknown optimizer",
        ),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path, edit, message):
    text = edit(TINY_TOML.format(architectures='["mlp"]', scales="[0.01]"))
    with pytest.raises(InputError, match=message) as error:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(error.value)


def test_missing_and_binary_config_files(tmp_path):
    with pytest.raises(InputError, match="does not exist|not found|no such"):
        load_config(tmp_path / "nope.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(InputError) as error:
        load_config(binary)
    assert "\n" not in str(error.value)


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="is a file, not a folder"):
        run_sweep(TINY, blocker, device="cpu", progress=False)
    with pytest.raises(InputError, match="cannot be created or written"):
        run_sweep(TINY, blocker / "below", device="cpu", progress=False)


def test_bad_device_executor_and_ray_timeout(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            run_sweep(TINY, tmp_path / "out", device="cuda", progress=False)
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        run_sweep(TINY, tmp_path / "out", device="tpu", progress=False)
    with pytest.raises(InputError, match="unknown executor"):
        run_sweep(TINY, tmp_path / "out", executor="ray-cluster", progress=False)
    with pytest.raises(InputError, match="--ray-timeout must be"):
        run_sweep(TINY, tmp_path / "out", executor="ray", ray_timeout=0, progress=False)
    assert not (tmp_path / "out").exists(), "bad options are refused before the folder is made"


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    text = TINY_TOML.format(architectures='["resnet"]', scales="[0.01]")
    code = main(["sweep", "--config", str(_write(tmp_path, text)), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0 and "unknown architecture 'resnet'" in error


# ------------------------------------------------------------------------- measurements
# The AlignmentReport keys the sweep does not have: per-report metadata, not per-seed numbers.
# The sweep leaves out the eps* trust check (one more student gradient per seed at eps*, see
# alignment.critical_step_check): its eps_star column is the truncated quadratic's root only.
# ``rule`` is the optional update-rule report (alignment_report(rule=...)); the rules sweep
# (sweep/rules.py, tests/studies/rules/test_sweep_rules.py) has those columns.
NOT_IN_THE_TABLE = {
    "rule",
    "student_lr",
    "num_inputs",
    "inner_second_order",
    "cosine_noise_floor",
    "eps_star_residual",
    "eps_star_trusted",
    "eps_star_note",
}


@pytest.mark.parametrize("placement", ["scaled_noise", "independent"])
def test_every_shared_column_equals_the_engine(placement):
    """Oracle: each seed's row equals ``alignment_report`` on that seed's tensors, column by column."""
    config = load_config(TINY)
    job = next(
        j
        for j in expand_jobs(config, "cpu")
        if j["arch"] == "mlp" and j["placement"] == placement and j["scale"] in (0.03, 1.0)
    )
    rows = [r for r in run_configuration(job) if r["measurement"] == "one_step"]
    shared = [f.name for f in fields(AlignmentReport) if f.name in COLUMNS]
    assert set(shared) == {f.name for f in fields(AlignmentReport)} - NOT_IN_THE_TABLE
    problem = prepare_configuration(job)
    model, loss = problem.model, make_loss(job["measure"]["loss"])
    for i, row in enumerate(rows):
        task = TeacherTask(F.cross_entropy, problem.x_teacher[i], problem.labels[i])
        theta0 = problem.theta0[i]
        v = task.update(model, theta0)
        report = alignment_report(
            model,
            v,
            problem.x_student[i],
            loss,
            job["eps"],
            theta0=theta0,
            student_init=problem.theta_student[i],
            teacher=task,
        )
        for key in shared:
            expected = getattr(report, key)
            if isinstance(expected, str | int):
                assert str(row[key]) == str(expected), key
            else:
                assert row[key] == pytest.approx(expected, rel=RTOL, abs=1e-300), key
        k_v = gauss_newton_product(model, theta0, problem.x_student[i], loss, v)
        assert row["norm_K_v"] == pytest.approx(float(k_v.norm()), rel=RTOL)
        assert row["batching"] == "vmap"


def test_loop_batching_equals_vmap(tmp_path):
    config_text = TINY_TOML.format(architectures='["transformer"]', scales="[0.01]")
    jobs = expand_jobs(load_config(_write(tmp_path, config_text)), "cpu")
    for job in jobs:
        loop_job = {**job, "measure": {**job["measure"], "batching": "loop"}}
        batched, looped = run_configuration(job), run_configuration(loop_job)
        assert len(batched) == len(looped) == rows_per_job(job)
        for a, b in zip(batched, looped):
            assert b["batching"] == "loop" and a["batching"] == "vmap"
            for key in (
                "cos_exact_teacher",
                "cos_first_order_expected",
                "cos_step_teacher",
                "teacher_loss",
            ):
                if a.get(key) is not None:
                    assert a[key] == pytest.approx(b[key], rel=RTOL, abs=1e-12, nan_ok=True)


def test_vmap_failure_falls_back_to_a_loop_and_says_so():
    def needs_python_scalars(a):
        return {"doubled": torch.tensor(2 * a.sum().item())}  # .item() cannot run under vmap

    with pytest.warns(UserWarning, match="vmap failed.*looping over seeds"):
        result, mode = run_over_seeds(
            needs_python_scalars, (torch.ones(3, 2),), prefer_vmap=True, label="test"
        )
    assert mode == "loop"
    torch.testing.assert_close(result["doubled"], torch.full((3,), 4.0))


@pytest.mark.gpu
def test_cuda_sweep_matches_cpu(tmp_path):
    cpu = read_table(run_sweep(TINY, tmp_path / "cpu", device="cpu", progress=False))
    gpu = read_table(run_sweep(TINY, tmp_path / "gpu", device="cuda", progress=False))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert a["key"].rsplit("|", 1)[0] == b["key"].rsplit("|", 1)[0]
        for key in ("cos_exact_teacher", "cos_first_order_teacher", "cos_displacement_teacher"):
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9, nan_ok=True)


# ------------------------------------------------------------------------- the table
def test_tiny_sweep_table_and_environment(tiny_sweep):
    out, table = tiny_sweep
    rows = read_table(table)
    config = load_config(TINY)
    jobs = expand_jobs(config, "cpu")
    assert len(rows) == sum(rows_per_job(j) for j in jobs)
    assert list(rows[0]) == list(COLUMNS)
    environment = json.loads((out / ENVIRONMENT_NAME).read_text())
    assert environment["grid"] == config.grid_values()
    assert environment["device"] == "cpu"
    assert environment["packages"]["torch"] == torch.__version__
    assert environment["batching_this_run"] == ["vmap"]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["model"]["width"] == 8 and run["grid"]["seeds"] == [0, 1, 2]


def test_tiny_sweep_alignment_falls_with_distance(tiny_sweep):
    """Positive at the shared init, falling with distance, first order close near theta_0."""
    rows = [r for r in read_table(tiny_sweep[1]) if r["measurement"] == "one_step"]
    for arch in ("mlp", "transformer"):
        mine = [
            r for r in rows if r["arch"] == arch and r["placement"] in ("shared", "scaled_noise")
        ]
        shared = [r["cos_exact_teacher"] for r in mine if r["placement"] == "shared"]
        far = [r["cos_exact_teacher"] for r in mine if r["scale"] == 0.3]
        near = [r for r in mine if r["scale"] == 0.003]
        assert min(shared) > 0.4, arch
        assert sum(far) / len(far) < sum(shared) / len(shared) - 0.3, arch
        for r in near:
            assert abs(r["cos_first_order_teacher"] - r["cos_exact_teacher"]) < 0.02, arch


def test_rerun_skips_finished_configurations(tiny_sweep, tmp_path):
    out, _ = tiny_sweep
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (TABLE_NAME, ENVIRONMENT_NAME, "run.json"):
        (copy / name).write_bytes((out / name).read_bytes())
    before = (copy / TABLE_NAME).read_bytes()
    started = time.monotonic()
    run_sweep(TINY, copy, device="cpu", progress=False)
    assert (copy / TABLE_NAME).read_bytes() == before
    assert time.monotonic() - started < 5


def test_a_cut_table_recomputes_the_cut_configuration(tiny_sweep, tmp_path, capsys):
    """A torn last line, a cut at a row boundary, a missing last newline: the configuration
    whose marker is gone is recomputed; the table equals the uninterrupted run's (issue 24)."""
    out, table = tiny_sweep
    text = table.read_text()
    lines = text.splitlines(keepends=True)
    assert lines[-1].startswith("#unit,")
    for name, cut in (
        ("torn", text[: len(text) - 40]),
        ("boundary", "".join(lines[:-3])),
        ("newline", text[:-1]),
    ):
        damaged = tmp_path / name
        damaged.mkdir()
        (damaged / "run.json").write_bytes((out / "run.json").read_bytes())
        (damaged / TABLE_NAME).write_text(cut)
        run_sweep(TINY, damaged, device="cpu", progress=False)
        assert (damaged / TABLE_NAME).read_text() == text, name
    (damaged / TABLE_NAME).write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="has columns"):
        run_sweep(TINY, damaged, device="cpu", progress=False)


def test_completed_seeds_lists_every_pair(tiny_sweep):
    _, table = tiny_sweep
    jobs = expand_jobs(load_config(TINY), "cpu")
    assert completed_seeds(table) == {j["key"]: set(j["seeds"]) for j in jobs}


def _sweep_command(config: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sublim_theory.cli.main",
        "sweep",
        "--config",
        str(config),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tmp_path):
    """Kill a sweep with SIGKILL after a few configurations, rerun it: same bytes as one run."""
    config = _write(
        tmp_path,
        TINY_TOML.format(
            architectures='["mlp", "resmlp"]', scales="[0.001, 0.003, 0.01, 0.03, 0.1, 1.0]"
        ),
    )
    jobs = expand_jobs(load_config(config), "cpu")
    header_and_two = 1 + sum(rows_per_job(j) + 1 for j in jobs[:2])  # rows and a marker each
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    killed_out = tmp_path / "killed"
    process = subprocess.Popen(_sweep_command(config, killed_out), env=environment, cwd=REPO)
    table = killed_out / TABLE_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if table.exists() and table.read_text().count("\n") >= header_and_two:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the sweep finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = completed_seeds(table)
    assert 2 <= len(done) < len(jobs)

    resumed = subprocess.run(_sweep_command(config, killed_out), env=environment, cwd=REPO)
    assert resumed.returncode == 0
    straight = run_sweep(config, tmp_path / "straight", device="cpu", progress=False)
    assert table.read_bytes() == straight.read_bytes()
    assert len(read_table(table)) == sum(rows_per_job(j) for j in jobs)
