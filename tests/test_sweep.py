import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sublim_theory.alignment import TeacherTask, alignment_report, gauss_newton_product
from sublim_theory.cli import main
from sublim_theory.errors import InputError
from sublim_theory.losses import make_loss
from sublim_theory.plotting import alignment_curves
from sublim_theory.sweep import (
    COLUMNS,
    ENVIRONMENT_NAME,
    TABLE_NAME,
    _run_over_seeds,
    expand_jobs,
    finished_keys,
    load_config,
    prepare_configuration,
    read_table,
    rows_per_job,
    run_configuration,
    run_sweep,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "configs" / "init_distance_tiny.toml"
CONFIGS = ("init_distance_tiny.toml", "init_distance.toml", "init_distance_full.toml")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and much faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_sweep")
    table = run_sweep(TINY, out, device="cpu", progress=False)
    return out, table


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


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('["mlp"]', '["mlp", "lstm"]'), "unknown architecture 'lstm'"),
        (lambda t: t.replace("[0.01]", "[-0.5]"), "negative distance"),
        (lambda t: t.replace('["mlp"]', "[]"), "grid.architectures is empty"),
        (lambda t: t.replace("eps = [1e-3]", "eps = []"), "grid.eps is empty"),
        (lambda t: t.replace("seeds = 2", "seeds = []"), "grid.seeds is empty"),
        (
            lambda t: t.replace("shared = [0.0]\nscaled_noise = [0.01]", ""),
            "grid.placements is empty",
        ),
        (lambda t: t.replace("eps = [1e-3]", "eps = [0.0]"), "eps must be a finite number > 0"),
        (lambda t: t.replace("shared", "everywhere"), "unknown placement 'everywhere'"),
        (lambda t: t.replace("width = 6", "widht = 6"), "unknown key"),
        (lambda t: t + "\n[extra]\n", "unknown section"),
        (lambda t: t.replace("[grid]", "[grid"), "not valid TOML"),
        (
            lambda t: t.replace("steps = 2", "steps = 2\noptimizers = ['lbfgs']"),
            "unknown optimizer",
        ),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path, edit, message):
    text = edit(TINY_TOML.format(architectures='["mlp"]', scales="[0.01]"))
    with pytest.raises(InputError, match=message):
        load_config(_write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="not a directory"):
        run_sweep(TINY, blocker, device="cpu", progress=False)
    with pytest.raises(InputError, match="cannot create output directory|not a directory"):
        run_sweep(TINY, blocker / "below", device="cpu", progress=False)


def test_cuda_without_gpu_and_unknown_executor(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            run_sweep(TINY, tmp_path / "out", device="cuda", progress=False)
    with pytest.raises(InputError, match="unknown executor"):
        run_sweep(TINY, tmp_path / "out", executor="ray-cluster", progress=False)


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    text = TINY_TOML.format(architectures='["resnet"]', scales="[0.01]")
    code = main(["sweep", "--config", str(_write(tmp_path, text)), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0 and "unknown architecture 'resnet'" in error


# ------------------------------------------------------------------------- measurements
def test_vmap_measurement_matches_the_engine():
    """Oracle: every seed's vmapped one-step numbers equal the engine's alignment_report."""
    config = load_config(TINY)
    job = next(j for j in expand_jobs(config, "cpu") if j["arch"] == "mlp" and j["scale"] == 0.03)
    rows = [r for r in run_configuration(job) if r["measurement"] == "one_step"]
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
        for key in (
            "cos_exact_teacher",
            "cos_first_order_teacher",
            "inner_exact",
            "inner_first_order",
            "A",
            "B",
            "init_distance_rel",
            "teacher_loss_change_exact",
            "teacher_loss_change_first_order",
        ):
            assert row[key] == pytest.approx(getattr(report, key), rel=1e-9, abs=1e-15), key
        k_v = gauss_newton_product(model, theta0, problem.x_student[i], loss, v)
        assert row["norm_K_v"] == pytest.approx(float(k_v.norm()), rel=1e-10)
        assert row["batching"] == "vmap"


def test_loop_batching_equals_vmap(tmp_path):
    config_text = TINY_TOML.format(architectures='["transformer"]', scales="[0.01]")
    jobs = expand_jobs(load_config(_write(tmp_path, config_text)), "cpu")
    loop_jobs = [{**j, "measure": {**j["measure"], "batching": "loop"}} for j in jobs]
    for job, loop_job in zip(jobs, loop_jobs):
        batched, looped = run_configuration(job), run_configuration(loop_job)
        assert len(batched) == len(looped) == rows_per_job(job)
        for a, b in zip(batched, looped):
            assert b["batching"] == "loop" and a["batching"] == "vmap"
            for key in ("cos_exact_teacher", "cos_law", "cos_step_teacher", "teacher_loss"):
                if a.get(key) is not None:
                    assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12, nan_ok=True)


def test_vmap_failure_falls_back_to_a_loop_and_says_so():
    def needs_python_scalars(a):
        return {"doubled": torch.tensor(2 * a.sum().item())}  # .item() cannot run under vmap

    with pytest.warns(UserWarning, match="vmap failed.*looping over seeds"):
        result, mode = _run_over_seeds(
            needs_python_scalars, (torch.ones(3, 2),), prefer_vmap=True, label="test"
        )
    assert mode == "loop"
    torch.testing.assert_close(result["doubled"], torch.full((3,), 4.0))


@pytest.mark.gpu
def test_cuda_sweep_matches_cpu(tmp_path):
    cpu = read_table(run_sweep(TINY, tmp_path / "cpu", device="cpu", progress=False))
    gpu = read_table(run_sweep(TINY, tmp_path / "gpu", device="cuda", progress=False))
    assert [r["key"] for r in cpu] == [r["key"] for r in gpu]
    for a, b in zip(cpu, gpu):
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
    assert environment["config"]["grid"] == config["grid"]
    assert environment["device"] == "cpu"
    assert (
        environment["packages"]["torch"] == torch.__version__.split("+")[0]
        or environment["packages"]["torch"]
    )
    assert "git_revision" in environment and environment["batching_this_run"] == ["vmap"]


def test_tiny_sweep_alignment_falls_with_distance(tiny_sweep):
    """What the figure draws: positive at the shared init, falling, prediction close at small delta."""
    rows = read_table(tiny_sweep[1])
    for arch, points in alignment_curves(rows, "scaled_noise", 1e-3).items():
        shared, nearest, farthest = points[0], points[1], points[-1]
        assert shared["distance_rel"] == 0 and shared["cos"] > 0.4, arch
        assert shared["cos"] - shared["cos_ci"] > 0, arch
        assert farthest["cos"] < shared["cos"] - 0.3, arch
        assert abs(nearest["first_order"] - nearest["cos"]) < 0.02, arch
        assert shared["law"] == pytest.approx(shared["cos"], abs=1e-3), arch


def test_rerun_skips_finished_configurations(tiny_sweep, tmp_path):
    out, table = tiny_sweep
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (TABLE_NAME, ENVIRONMENT_NAME):
        (copy / name).write_bytes((out / name).read_bytes())
    before = (copy / TABLE_NAME).read_bytes()
    started = time.monotonic()
    run_sweep(TINY, copy, device="cpu", progress=False)
    assert (copy / TABLE_NAME).read_bytes() == before
    assert time.monotonic() - started < 5


def test_damaged_tables_are_reported_not_deleted(tiny_sweep, tmp_path):
    out, table = tiny_sweep
    text = table.read_text()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / ENVIRONMENT_NAME).write_bytes((out / ENVIRONMENT_NAME).read_bytes())
    truncated = text[: len(text) - 40]
    (damaged / TABLE_NAME).write_text(truncated)
    with pytest.raises(InputError, match="incomplete line.*delete that last line"):
        run_sweep(TINY, damaged, device="cpu", progress=False)
    assert (damaged / TABLE_NAME).read_text() == truncated
    lines = text.splitlines(keepends=True)
    (damaged / TABLE_NAME).write_text("".join(lines[:-3]))
    with pytest.raises(InputError, match="rows, expected"):
        run_sweep(TINY, damaged, device="cpu", progress=False)
    (damaged / TABLE_NAME).write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="does not have this sweep's columns"):
        run_sweep(TINY, damaged, device="cpu", progress=False)


def test_other_settings_in_the_same_out_dir_are_refused(tiny_sweep, tmp_path):
    out, _ = tiny_sweep
    other = tmp_path / "other.toml"
    other.write_text(TINY.read_text().replace("n_inputs = 16", "n_inputs = 17"))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (TABLE_NAME, ENVIRONMENT_NAME):
        (copy / name).write_bytes((out / name).read_bytes())
    with pytest.raises(InputError, match="different .* settings"):
        run_sweep(other, copy, device="cpu", progress=False)


def test_finished_keys_counts_complete_configurations(tiny_sweep):
    _, table = tiny_sweep
    jobs = expand_jobs(load_config(TINY), "cpu")
    assert finished_keys(table, {j["key"]: rows_per_job(j) for j in jobs}) == {
        j["key"] for j in jobs
    }


def _sweep_command(config: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sublim_theory.cli",
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
    header_and_two = 1 + sum(rows_per_job(j) for j in jobs[:2])
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
    done = finished_keys(table, {j["key"]: rows_per_job(j) for j in jobs})
    assert 2 <= len(done) < len(jobs)

    resumed = subprocess.run(_sweep_command(config, killed_out), env=environment, cwd=REPO)
    assert resumed.returncode == 0
    straight = run_sweep(config, tmp_path / "straight", device="cpu", progress=False)
    assert table.read_bytes() == straight.read_bytes()
    keys = [row["key"] for row in read_table(table)]
    assert len(keys) == sum(rows_per_job(j) for j in jobs)
    assert sorted(set(keys)) == sorted(j["key"] for j in jobs)
