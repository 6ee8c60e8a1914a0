"""The run layer's guarantees for the tiny-LM studies (issue 24): numbers, finetune, defenses, screen.

Nothing lost, nothing silently pooled: a full disk mid-run is one line naming the file, with
the finished seeds kept and nothing half-written; a folder whose ``run.json`` is gone, or whose
``selection.json`` is damaged or of other settings, is refused before any compute; a stored seed
without rows is refused, not dropped; a rerun rewrites its tables byte for byte; the base cache
survives two writers of one key and a full disk; absurd counts and rates are one line.
"""

import json
import shutil

import pytest

from sublim_theory.cli.main import main
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.defenses import experiment as defenses_experiment
from sublim_theory.studies.finetune import variants
from sublim_theory.studies.numbers import experiment as numbers_experiment
from sublim_theory.testbeds.lm import training
from sublim_theory.testbeds.lm.config import load_config

FINETUNE = CONFIG_DIR / "finetune_tiny.toml"
DEFENSES = CONFIG_DIR / "defenses_tiny.toml"


def _never(*args, **kwargs):
    raise AssertionError("computed although the run should have been refused first")


def _one_line(capsys) -> str:
    """The command's error: one line, the last on stderr (progress lines may precede it)."""
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("sublim-theory ") and ": error: " in last, err
    assert "Traceback" not in err and sum(": error: " in line for line in err.splitlines()) == 1
    return last


def _no_compute(monkeypatch):
    for module, name in (
        (training, "pretrain"),
        (variants, "prepare_seed"),
        (variants, "select_learning_rates"),
        (numbers_experiment, "run_seed"),
        (defenses_experiment, "run_seed"),
    ):
        monkeypatch.setattr(module, name, _never)


def _leftovers(folder):
    """Temporary files a write left behind (the lock and the fixture's filler are expected)."""
    return [
        p.name
        for p in folder.rglob(".*")
        if p.is_file() and p.name not in (".sublim-theory.lock", ".filler")
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lm_cache")


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("finetune") / "run"
    argv = ["finetune", "--config", str(FINETUNE), "--seeds", "1", "--out", str(out)]
    assert main([*argv, "--cache", str(cache)]) == 0
    return out


def _finetune(out, cache, *extra, config=FINETUNE, seeds=1):
    argv = ["finetune", "--config", str(config), "--seeds", str(seeds), "--out", str(out)]
    return main([*argv, "--cache", str(cache), *extra])


# --------------------------------------------------------------------------------------------
# finetune: stable tables, lost run.json, damaged selection.json, a full disk
# --------------------------------------------------------------------------------------------
def test_finetune_rerun_rewrites_its_tables_byte_for_byte(
    finetune_run, cache, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    shutil.copytree(finetune_run, out)
    names = ("results.csv", "steps.csv", "lr_grid.csv", "table.md")
    before = {name: (out / name).read_bytes() for name in names}
    _no_compute(monkeypatch)
    assert _finetune(out, cache) == 0
    # the same columns in the same order (a resumed run's rows come back with sorted keys)
    assert {name: (out / name).read_bytes() for name in names} == before


def test_finetune_folder_without_run_json_is_refused(
    finetune_run, cache, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    shutil.copytree(finetune_run, out)
    (out / "run.json").unlink()
    changed = tmp_path / "changed.toml"
    changed.write_text(
        FINETUNE.read_text().replace("[student]\nsteps = 6", "[student]\nsteps = 12")
    )
    assert changed.read_text() != FINETUNE.read_text()
    _no_compute(monkeypatch)
    capsys.readouterr()
    assert _finetune(out, cache, config=changed, seeds=3) == 2
    assert "no run.json" in _one_line(capsys)
    assert sorted(p.name for p in (out / "seeds").iterdir()) == ["seed-0.json"]
    # a folder with only the old learning rates is refused as well (they were chosen for
    # settings nobody can check any more)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(out / "selection.json", lone / "selection.json")
    assert _finetune(lone, cache, config=changed) == 2
    assert "selection.json" in _one_line(capsys)


@pytest.mark.parametrize("damage", ["truncated", "empty", "binary", "other settings", "no lr"])
def test_finetune_damaged_selection_is_one_line_before_compute(
    finetune_run, cache, tmp_path, monkeypatch, capsys, damage
):
    out = tmp_path / "out"
    shutil.copytree(finetune_run, out)
    path = out / "selection.json"
    text = path.read_text()
    record = json.loads(text)
    content = {
        "truncated": text[: len(text) // 2].encode(),
        "empty": b"",
        "binary": b"\x00\xff\xfe\x80 not json",
        "other settings": json.dumps({**record, "fingerprint": "0" * 16}).encode(),
        "no lr": json.dumps({**record, "lrs": {}}).encode(),
    }[damage]
    path.write_bytes(content)
    _no_compute(monkeypatch)
    capsys.readouterr()
    assert _finetune(out, cache, seeds=2) == 2
    assert "selection.json" in _one_line(capsys)
    assert path.read_bytes() == content  # never rewritten


def test_finetune_full_disk_is_one_line_and_keeps_the_finished_seed(
    small_disk, cache, monkeypatch, capsys
):
    out = small_disk.path / "out"
    real, computed = variants.run_seed, []

    def run_seed(data, *args, **kwargs):
        computed.append(data.seed)
        result = real(data, *args, **kwargs)
        if computed == [0, 1]:  # the disk fills while seed 1 trains
            small_disk.fill()
        return result

    monkeypatch.setattr(variants, "run_seed", run_seed)
    capsys.readouterr()
    assert _finetune(out, cache, seeds=2) == 2
    err = _one_line(capsys)
    assert "No space left" in err and "seed-1.json" in err
    assert sorted(p.name for p in (out / "seeds").iterdir()) == ["seed-0.json"]
    assert _leftovers(out) == []  # nothing half-written
    assert "seeds: [0]" in (out / "table.md").read_text()  # the tables of the seed that finished
    small_disk.free()
    computed.clear()
    assert _finetune(out, cache, seeds=2) == 0
    assert computed == [1]  # seed 0 was kept, only seed 1 recomputed
    assert "seeds: [0, 1]" in (out / "table.md").read_text()


# --------------------------------------------------------------------------------------------
# defenses: a seed file without rows
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def defenses_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("defenses") / "run"
    argv = ["defenses", "--config", str(DEFENSES), "--seeds", "1", "--out", str(out)]
    assert main([*argv, "--cache", str(cache)]) == 0
    return out


@pytest.mark.parametrize("rows", [[], None])
def test_defenses_seed_without_rows_is_refused(
    defenses_run, cache, tmp_path, monkeypatch, capsys, rows
):
    out = tmp_path / "out"
    shutil.copytree(defenses_run, out)
    table = (out / "results.csv").read_bytes()
    path = out / "seeds" / "seed-0.json"
    record = json.loads(path.read_text())
    if rows is None:
        del record["rows"]
    else:
        record["rows"] = rows
    path.write_text(json.dumps(record))
    _no_compute(monkeypatch)
    argv = ["defenses", "--config", str(DEFENSES), "--seeds", "1", "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, "--cache", str(cache)]) == 2
    assert "seed-0.json" in _one_line(capsys)
    assert (out / "results.csv").read_bytes() == table  # the seed is not dropped from the table


def test_defenses_rerun_rewrites_its_tables_byte_for_byte(
    defenses_run, cache, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    shutil.copytree(defenses_run, out)
    names = ("results.csv", "summary.csv", "slopes.csv", "table.md")
    before = {name: (out / name).read_bytes() for name in names}
    _no_compute(monkeypatch)
    argv = ["defenses", "--config", str(DEFENSES), "--seeds", "1", "--out", str(out)]
    assert main([*argv, "--cache", str(cache)]) == 0
    assert {name: (out / name).read_bytes() for name in names} == before


# --------------------------------------------------------------------------------------------
# the base cache: two writers of one key, a full disk, and every command probes it first
# --------------------------------------------------------------------------------------------
def _quick_pretrain(config, spec):
    return training.build_lm(config, spec.init_seed), 1.25


def test_two_writers_of_one_base_both_succeed(tmp_path, monkeypatch):
    """Writer A serializes, writer B writes and renames the same key, then A renames."""
    config = load_config(CONFIG_DIR / "numbers_tiny.toml")
    spec = training.BaseSpec(0, 0, 0)
    monkeypatch.setattr(training, "pretrain", _quick_pretrain)
    real_save, inner = training.torch.save, []

    def save(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        if not inner:  # the outer writer: the other one runs to completion right now
            inner.append(None)
            inner[0] = training.cached_base(config, spec, tmp_path, log=_never)

    monkeypatch.setattr(training.torch, "save", save)
    outer = training.cached_base(config, spec, tmp_path, log=_never)
    monkeypatch.undo()
    assert not outer[1]["cached"] and not inner[0][1]["cached"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"base-{outer[1]['key']}.pt"]
    again, info = training.cached_base(config, spec, tmp_path, log=_never)
    assert info["cached"] and info["final_loss"] == 1.25


def test_a_full_cache_is_one_line_naming_the_file(small_disk, monkeypatch):
    config = load_config(CONFIG_DIR / "numbers_tiny.toml")
    monkeypatch.setattr(training, "pretrain", _quick_pretrain)
    small_disk.fill()
    with pytest.raises(Exception) as caught:
        training.cached_base(config, training.BaseSpec(0, 0, 0), small_disk.path, log=_never)
    message = str(caught.value)
    assert type(caught.value).__name__ == "InputError", message
    assert "base-" in message and "No space left" in message and "\n" not in message
    assert _leftovers(small_disk.path) == [] and not list(small_disk.path.glob("*.tmp"))


@pytest.mark.parametrize("command", ["numbers", "finetune", "defenses", "screen"])
@pytest.mark.parametrize("state", ["full", "read-only"])
def test_every_command_probes_its_cache_before_compute(
    small_disk, tmp_path, monkeypatch, capsys, command, state
):
    cache = small_disk.path / "cache"
    cache.mkdir()
    small_disk.fill() if state == "full" else small_disk.read_only()
    _no_compute(monkeypatch)
    argv = [command, "--config", f"{command}_tiny", "--seeds", "1", "--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert main([*argv, "--cache", str(cache)]) == 2
    assert "cache" in _one_line(capsys)


# --------------------------------------------------------------------------------------------
# bounds: absurd counts and rates are one line before any compute
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command,flags,table",
    [
        ("numbers", ["--seeds", str(10**12)], None),
        ("finetune", ["--seeds", str(10**12)], None),
        ("defenses", ["--seeds", str(10**12)], None),
        ("screen", ["--seeds", str(10**12)], None),
        ("screen", ["--null-draws", str(10**9)], None),
        ("numbers", ["--seed", str(2**40)], None),
        ("numbers", [], "[student]\nlr = 1e308\n"),
        ("numbers", [], "[pretrain]\nsteps = 1000000000000\n"),
        ("numbers", [], "[teacher]\nn_sequences = 1000000000000\n"),
        ("defenses", [], "[corpus]\ncontinuation_len = 100000\n"),
        ("finetune", [], "[finetune]\nlr_grid_signsgd = [1e308]\n"),
        ("finetune", [], "[finetune]\nheldout = 1000000000000\n"),
        ("finetune", [], "[model]\nd_model = 16\n[finetune]\nranks = [1000]\n"),
        ("screen", [], "[screen]\nbootstrap = 1000000000000\n"),
    ],
)
def test_absurd_counts_and_rates_are_one_line(tmp_path, monkeypatch, capsys, command, flags, table):
    _no_compute(monkeypatch)
    argv = [command, "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache")]
    if table is not None:
        (tmp_path / "c.toml").write_text(table)
        argv += ["--config", str(tmp_path / "c.toml")]
    else:
        argv += ["--config", f"{command}_tiny"]
    capsys.readouterr()
    assert main([*argv, *flags]) == 2
    _one_line(capsys)
