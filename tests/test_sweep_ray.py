"""The Ray executor (a private instance on 127.0.0.1) gives the same table as the local one."""

import pytest

from sublim_theory.errors import InputError
from sublim_theory.sweep import TINY_CONFIG, run_sweep

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
