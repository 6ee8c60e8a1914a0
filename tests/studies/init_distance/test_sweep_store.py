"""The sweep's table under a full disk, a legacy file and absurd seed counts (issue 24)."""

import errno
import os

import pytest

from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.studies.init_distance import TABLE_NAME, completed_seeds, load_config, run_sweep

CONFIG = """
[grid]
architectures = ["mlp", "resmlp"]
eps = [1e-3]
seeds = {seeds}
[grid.placements]
shared = [0.0]
scaled_noise = [0.01]
[model]
width = 6
depth = 1
[measure]
n_inputs = 8
n_teacher_inputs = 8
[trajectory]
steps = 1
optimizers = ["sgd"]
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    config = folder / "config.toml"
    config.write_text(CONFIG.format(seeds=2))
    return config, run_sweep(config, folder / "out", device="cpu", progress=False)


def test_a_full_disk_mid_sweep_is_one_line_and_the_rerun_equals_the_straight_run(
    straight, tmp_path, monkeypatch, capsys
):
    config, table = straight
    out = tmp_path / "out"
    real, budget = os.write, [table.stat().st_size // 2]  # the disk fills half way through

    def write(descriptor, data):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = real(descriptor, bytes(data[: budget[0]]))
        budget[0] -= written
        return written

    monkeypatch.setattr(os, "write", write)
    arguments = ["sweep", "--config", str(config), "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(arguments) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'{out / TABLE_NAME}'" in err and "No space left" in err
    monkeypatch.undo()
    text = (out / TABLE_NAME).read_text()
    assert text.endswith("\n") and text.splitlines()[-1].startswith("#unit,")  # whole units
    assert 1 <= len(completed_seeds(out / TABLE_NAME)) < 4
    assert main(arguments) == 0
    assert (out / TABLE_NAME).read_bytes() == table.read_bytes()


def test_a_legacy_table_is_marked_once_and_not_recomputed(straight, tmp_path, capsys):
    config, table = straight
    out = tmp_path / "legacy"
    out.mkdir()
    (out / "run.json").write_bytes((table.parent / "run.json").read_bytes())
    whole = table.read_text()
    legacy = "".join(line for line in whole.splitlines(True) if not line.startswith("#unit,"))
    (out / TABLE_NAME).write_text(legacy)
    run_sweep(config, out, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "marked the 4 units of a legacy file" in err and "sweep mlp" not in err
    assert (out / TABLE_NAME).read_text() == whole
    # a legacy table of other settings (its keys end with their fingerprint) is refused
    (out / TABLE_NAME).write_text(legacy.replace("|", "|x", 1))
    with pytest.raises(InputError, match="this config does not produce"):
        run_sweep(config, out, device="cpu", progress=False)


@pytest.mark.parametrize(
    ("seeds", "match"),
    [("1000000000000", "count from 1 to 10000"), ("[4294967296]", "seeds"), ("0", "count")],
)
def test_absurd_seed_counts_are_one_line(tmp_path, seeds, match):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.format(seeds=seeds))
    with pytest.raises(InputError, match=match) as error:
        load_config(path)
    assert "\n" not in str(error.value)
