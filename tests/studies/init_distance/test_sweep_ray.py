"""The Ray executor (a private instance on 127.0.0.1) gives the same table as the local one."""

import time

import pytest

from sublim_theory.errors import InputError
from sublim_theory.studies.init_distance import TINY_CONFIG, run_sweep

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_executor_matches_local_and_resumes(tmp_path):
    local = run_sweep(TINY_CONFIG, tmp_path / "local", device="cpu", progress=False)
    remote = run_sweep(TINY_CONFIG, tmp_path / "ray", device="cpu", executor="ray", progress=False)
    assert remote.read_text() == local.read_text()

    # Resumption under Ray: drop the last configuration's rows, rerun, get the same table back.
    lines = remote.read_text().splitlines(keepends=True)
    last_key = lines[-1].split(",")[0]
    kept = [line for line in lines if not line.startswith(last_key + ",")]
    remote.write_text("".join(kept))
    run_sweep(TINY_CONFIG, tmp_path / "ray", device="cpu", executor="ray", progress=False)
    assert remote.read_text() == local.read_text()
    assert not ray.is_initialized()


def test_address_needs_the_ray_executor(tmp_path):
    with pytest.raises(InputError, match="--address only applies to --executor ray"):
        run_sweep(TINY_CONFIG, tmp_path, device="cpu", progress=False, address="auto")


def test_an_unreachable_ray_address_fails_within_the_timeout(tmp_path, capsys):
    """Ray itself retries an unreachable address for minutes; the sweep gives up in one line."""
    from sublim_theory.cli.main import main

    started = time.monotonic()
    code = main(
        [
            "sweep",
            "--config",
            str(TINY_CONFIG),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--executor",
            "ray",
            "--address",
            "127.0.0.1:1",
            "--ray-timeout",
            "3",
            "--quiet",
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and time.monotonic() - started < 30
    assert "cannot reach Ray at 127.0.0.1:1" in error and error.count("\n") == 0
    assert not ray.is_initialized()


def test_a_silent_ray_address_fails_within_the_timeout(tmp_path):
    """Something listens but never answers as Ray: ray.init would wait; the sweep stops in time."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
        command = [sys.executable, "-m", "sublim_theory.cli.main", "sweep", "--config"]
        command += [str(TINY_CONFIG), "--out", str(tmp_path / "out"), "--device", "cpu"]
        command += ["--executor", "ray", "--address", f"127.0.0.1:{port}"]
        command += ["--ray-timeout", "3", "--quiet"]
        started = time.monotonic()
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[3],
        )
    assert result.returncode == 2 and time.monotonic() - started < 40
    assert "did not answer within 3 s (--ray-timeout)" in result.stderr
