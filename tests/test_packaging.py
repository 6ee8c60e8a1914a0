"""A non-editable install carries its default configs: build the wheel, install it elsewhere, run."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sublim_theory.harness.runs import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels without `wheel`
    out = tmp_path_factory.mktemp("wheel")
    # build from a clean copy: setuptools reuses a stale build/ folder in the checkout
    source = out / "source"
    ignored = ("build", "dist", "*.egg-info", ".venv", ".git", "out", "experiments", "tests")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*ignored))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w"]
        + [str(out), str(source)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (path,) = out.glob("sublim_theory-*.whl")
    return path


def test_the_wheel_ships_every_config(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            Path(n).name for n in archive.namelist() if n.startswith("sublim_theory/configs/")
        }
    assert shipped == {p.name for p in CONFIG_DIR.glob("*.toml")}
    assert {"init_distance.toml", "init_distance_tiny.toml"} <= shipped


def test_an_installed_wheel_runs_a_packaged_config_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    # run from a folder outside the checkout, with the installed copy first on the path
    environment = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import sublim_theory.harness.runs as r; print(r.CONFIG_DIR)"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()).is_relative_to(site)
    result = subprocess.run(
        [sys.executable, "-m", "sublim_theory.cli.main", "sweep", "--config", "init_distance_tiny"]
        + ["--out", str(tmp_path / "sweep"), "--device", "cpu", "--quiet"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sweep" / "sweep.csv").read_text().count("\n") > 1
