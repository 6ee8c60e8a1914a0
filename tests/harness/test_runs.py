import json
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import (
    LOCK_NAME,
    RUN_RECORD_NAME,
    OutputFolder,
    append_durably,
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    bound,
    dtype_from_name,
    dtype_name,
    fingerprint,
    load_toml,
    parse_config,
    resolve_device,
)


@dataclass(frozen=True)
class Model:
    hidden: tuple[int, ...] = (32, 32)
    activation: Literal["relu", "tanh"] = "relu"


@dataclass(frozen=True)
class Settings:
    steps: int = field(default=10, metadata=bound(ge=0))
    lr: float = field(default=1e-3, metadata=bound(gt=0))
    temperature: float = field(default=1.0, metadata=bound(gt=0))
    outputs: tuple[int, ...] = field(default=(10, 11, 12), metadata=bound(ge=0))
    cache: str | None = None
    verbose: bool = False
    model: Model = field(default_factory=Model)


def test_parse_config_fills_defaults_and_freezes():
    settings = parse_config(Settings, {"lr": 3, "model": {"hidden": [8]}}, "c.toml")
    assert settings.lr == 3.0 and isinstance(settings.lr, float)
    assert settings.model == Model(hidden=(8,)) and settings.steps == 10
    with pytest.raises(AttributeError):
        settings.lr = 1.0  # frozen


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"stpes": 3}, ["unknown key(s) ['stpes']", "allowed:", "'steps'"]),
        ({"steps": True}, ["steps must be an integer", "True"]),
        ({"steps": 2.5}, ["steps must be an integer"]),
        ({"steps": -1}, ["steps must be >= 0"]),
        ({"lr": float("nan")}, ["lr must be a finite number"]),
        ({"lr": float("inf")}, ["lr must be a finite number"]),
        ({"lr": "fast"}, ["lr must be a number"]),
        ({"temperature": 0}, ["temperature must be > 0"]),
        ({"outputs": [10, -1]}, ["outputs[1] must be >= 0"]),
        ({"outputs": []}, ["outputs must be a non-empty list"]),
        ({"model": {"hidden": [32.9, 1.5]}}, ["model: hidden[0] must be an integer"]),
        ({"model": {"activation": "gelu"}}, ["activation must be one of 'relu', 'tanh'"]),
        ({"model": 3}, ["model must be a table"]),
        ({"verbose": 1}, ["verbose must be true or false"]),
    ],
)
def test_parse_config_refuses_bad_values_in_one_line(raw, words):
    with pytest.raises(InputError) as caught:
        parse_config(Settings, raw, "c.toml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("c.toml")
    for word in words:
        assert word in message


def test_parse_config_requires_keys_without_default():
    @dataclass(frozen=True)
    class Needs:
        name: str

    with pytest.raises(InputError, match="missing key 'name'"):
        parse_config(Needs, {}, "x")


def test_load_toml_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_toml(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(InputError, match="not text"):
        load_toml(binary)
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = = 3\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_toml(broken)
    with pytest.raises(InputError, match="is a folder"):
        load_toml(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text("steps = 3\n[model]\nhidden = [4]\n")
    assert load_toml(good) == {"steps": 3, "model": {"hidden": [4]}}


def test_fingerprint_is_stable_and_sees_every_setting():
    a = fingerprint({"lr": 0.1, "grid": {"seeds": [0, 1]}})
    assert a == fingerprint({"grid": {"seeds": [0, 1]}, "lr": 0.1})
    assert a != fingerprint({"lr": 0.1, "grid": {"seeds": [0, 1, 2]}})
    assert a != fingerprint({"lr": math.nextafter(0.1, 1.0), "grid": {"seeds": [0, 1]}})
    assert len(a) == 16


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "table.json"
    atomic_write_json(path, {"b": float("nan"), "a": [1.0, float("inf")], "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": [1.0, None], "b": None, "p": str(tmp_path)}
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]
    append_durably(tmp_path / "rows.csv", "a\n")
    append_durably(tmp_path / "rows.csv", "b\n")
    assert (tmp_path / "rows.csv").read_text() == "a\nb\n"


def test_output_folder_refuses_paths_that_cannot_be_written_before_any_compute(tmp_path):
    regular = tmp_path / "file"
    regular.write_text("x")
    # root ignores permission bits, so use paths no user can write: a file, a path under a file
    for out in (regular, regular / "sub"):
        with pytest.raises(InputError) as caught:
            OutputFolder(out, "demo").open()
        assert "--out" in str(caught.value) and "\n" not in str(caught.value)


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from sublim_theory.harness.runs import OutputFolder
    with OutputFolder(sys.argv[1], "sweep"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_second_run_on_a_locked_folder_is_refused_at_once(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            InputError, match=rf"in use by another sublim-theory run \(pid {holder.pid}\)"
        ):
            OutputFolder(tmp_path, "sweep").open()
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: the folder is free again
    with OutputFolder(tmp_path, "sweep") as folder:
        assert (folder.path / LOCK_NAME).exists()
    with OutputFolder(tmp_path, "sweep"):
        pass  # released on exit


def test_check_settings_refuses_other_settings_and_dropped_grid_values(tmp_path):
    grid = {"seeds": [0, 1], "placements": {"noise": [0.1]}}
    with OutputFolder(tmp_path, "sweep") as folder:
        first = folder.check_settings({"width": 32, "lr": 0.1}, grid)
        assert json.loads((tmp_path / RUN_RECORD_NAME).read_text()) == first
        folder.check_settings({"width": 32, "lr": 0.1}, grid)  # the same run again
        grown = {"seeds": [0, 1, 2], "placements": {"noise": [0.1, 0.2], "shared": [0.0]}}
        folder.check_settings({"width": 32, "lr": 0.1}, grown)  # only adds configurations
        with pytest.raises(InputError, match=r"other settings \(width: 32 -> 64\)"):
            folder.check_settings({"width": 64, "lr": 0.1}, grown)
        with pytest.raises(InputError, match=r"seeds = \[2\]"):
            folder.check_settings({"width": 32, "lr": 0.1}, {**grown, "seeds": [0, 1]})
        with pytest.raises(InputError, match=r"placements.shared = \[0.0\]"):
            folder.check_settings(
                {"width": 32, "lr": 0.1}, {"seeds": [0, 1, 2], "placements": {"noise": [0.1, 0.2]}}
            )
    with OutputFolder(tmp_path, "mnist") as folder, pytest.raises(InputError, match="`sweep`"):
        folder.check_settings({"width": 32, "lr": 0.1}, grown)
    (tmp_path / RUN_RECORD_NAME).write_text('{"settings": ')
    with OutputFolder(tmp_path, "sweep") as folder, pytest.raises(InputError, match="corrupt"):
        folder.check_settings({"width": 32, "lr": 0.1}, grown)


def test_devices_and_dtypes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert dtype_from_name("float32") is torch.float32 and dtype_name(torch.float64) == "float64"
    with pytest.raises(InputError, match="unknown dtype 'float16'"):
        dtype_from_name("float16")


def test_paths_are_plain_in_records(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"out": Path("a/b")})
    assert json.loads((tmp_path / "r.json").read_text()) == {"out": "a/b"}


def test_figures_are_saved_whole(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    atomic_save_figure(figure, tmp_path / "f.png", dpi=50)
    atomic_save_figure(figure, tmp_path / "f.pdf")
    plt.close(figure)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


def test_atomic_write_csv_writes_the_header_and_every_row(tmp_path):
    import csv

    path = tmp_path / "rows.csv"
    path.write_text("old")
    rows = [{"a": 1, "b": "x"}, {"a": 2.5, "b": "y, z"}]
    atomic_write_csv(path, rows, ["a", "b"])
    with open(path, newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"a": "1", "b": "x"}, {"a": "2.5", "b": "y, z"}]
    atomic_write_csv(path, [], ["a", "b"])
    assert path.read_text().splitlines() == ["a,b"]
