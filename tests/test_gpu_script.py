"""The prepared GPU script runs end to end at tiny size on CPU (no GPU on CI machines)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_runs_at_tiny_size_on_cpu(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SIZE": "tiny",
        "DEVICE": "cpu",
        "SWEEP": str(ROOT / "experiments/configs/init_distance_tiny.toml"),
        "OUT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "bench" / "bench.md").exists()
    assert "screen_factored[100]" in (tmp_path / "screen" / "bench.md").read_text()
    assert "real_generate_ours" in (tmp_path / "bench" / "bench_real.md").read_text()
    assert (tmp_path / "sweep" / "sweep.csv").exists()
    assert (tmp_path / "sweep" / "alignment_vs_distance.png").exists()
    assert "cpu" in (tmp_path / "device.txt").read_text()
