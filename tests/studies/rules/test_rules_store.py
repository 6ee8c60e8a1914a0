"""The rules sweep's guarantees under a cut file, a full disk, lost metadata and absurd values
(issue 24 items 1, 2, 5): a (job, seed) is done only when its end-of-unit marker is stored."""

import re
import shutil
import subprocess
import uuid

import pytest

from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.harness.store import MARKER
from sublim_theory.studies.rules.experiment import load_rules_config
from sublim_theory.studies.rules.study import run_rules_sweep

TINY = CONFIG_DIR / "rules_tiny.toml"


@pytest.fixture(scope="module")
def tiny_run(tiny_config_run):
    """The session's one run of the tiny config (``tests/conftest.py``, ``TINY_RUNS``)."""
    run = tiny_config_run("rules_tiny")
    assert run.code == 0, run.stderr
    return run.out


def _copy(run, to, text):
    to.mkdir()
    shutil.copy(run / "run.json", to / "run.json")
    (to / "rules.csv").write_text(text)
    return to


def _without_last_unit_marker(text):
    """Cut at a row boundary: the last unit keeps 5 of its rows and loses its marker."""
    lines = text.splitlines(keepends=True)
    assert lines[-1].startswith(MARKER)
    return "".join(lines[:-8])


@pytest.mark.parametrize(
    "damage",
    [
        _without_last_unit_marker,  # the "any row exists" case that lost 6 of 12 rows
        lambda text: text[:-40],  # a torn last line
        lambda text: text[:-1],  # the last newline missing: the next row must not glue on
    ],
    ids=["row-boundary", "torn-line", "no-final-newline"],
)
def test_a_cut_table_recomputes_the_cut_unit_and_equals_the_uninterrupted_run(
    tiny_run, tmp_path, damage, capsys
):
    whole = (tiny_run / "rules.csv").read_text()
    out = _copy(tiny_run, tmp_path / "cut", damage(whole))
    run_rules_sweep(TINY, out, progress_lines=True)
    assert "dropped an incomplete unit at the end; it will be recomputed" in capsys.readouterr().err
    assert (out / "rules.csv").read_text() == whole
    assert (out / "table.md").read_bytes() == (tiny_run / "table.md").read_bytes()


def test_a_legacy_table_without_markers_is_marked_not_recomputed(tiny_run, tmp_path, capsys):
    whole = (tiny_run / "rules.csv").read_text()
    legacy = "".join(line for line in whole.splitlines(True) if not line.startswith(MARKER))
    out = _copy(tiny_run, tmp_path / "legacy", legacy)
    run_rules_sweep(TINY, out, progress_lines=True)
    err = capsys.readouterr().err
    assert "marked the 20 units of a legacy file" in err
    assert not re.search(r"^rules .*: \d+s$", err, re.MULTILINE)  # no unit was computed
    assert (out / "rules.csv").read_text() == whole
    assert (out / "table.md").read_bytes() == (tiny_run / "table.md").read_bytes()


def test_other_settings_without_run_json_are_refused_not_pooled(tiny_run, tmp_path):
    """width 4 then width 6 in one folder whose run.json was lost: refused before any compute."""
    out = _copy(tiny_run, tmp_path / "lost", (tiny_run / "rules.csv").read_text())
    (out / "run.json").unlink()
    wide = tmp_path / "wide.toml"
    wide.write_text(TINY.read_text().replace("width = 4", "width = 6"))
    before = (out / "rules.csv").read_bytes()
    assert main(["rules", "--config", str(wide), "--out", str(out), "--quiet"]) == 2
    assert (out / "rules.csv").read_bytes() == before
    # with a run.json of the wide settings, the markers' fingerprints refuse the old rows
    shutil.copy(tiny_run / "run.json", out / "run.json")
    with pytest.raises(InputError, match="other settings"):
        run_rules_sweep(wide, out, progress_lines=False)
    assert (out / "rules.csv").read_bytes() == before


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=60k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a 60 KB tmpfs here (needs root); test_store_csv injects ENOSPC")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_the_rerun_equals_the_uninterrupted_run(
    tiny_run, small_disk, tmp_path, capsys
):
    """The case of issue 24 item 1: rules_tiny on a 60 KB filesystem."""
    out = small_disk / "out"
    status = main(["rules", "--config", str(TINY), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.count("\n") == 0 and "No space left on device" in err and "'" in err
    text = (out / "rules.csv").read_text()
    assert text.endswith("\n") and text.splitlines()[-1].startswith(MARKER)  # whole units only
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    assert main(["rules", "--config", str(TINY), "--out", str(moved), "--quiet"]) == 0
    assert (moved / "rules.csv").read_bytes() == (tiny_run / "rules.csv").read_bytes()
    assert (moved / "table.md").read_bytes() == (tiny_run / "table.md").read_bytes()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("seeds = 2", "seeds = 1000000000000"), "give a count from 1 to 10000"),
        (("seeds = 2", "seeds = [3000000000]"), "seeds"),
        (("[measure]", "[measure]\nsgd_lr = 1e308"), r"sgd_lr must be <= 1000000.0"),
        (("n_inputs = 8", "n_inputs = 100000000000"), "n_inputs must be <="),
        (("warm_steps = 2", "warm_steps = 10000000000"), "warm_steps must be <="),
        (("width = 4", "width = 1000000000"), "width must be <="),
    ],
)
def test_absurd_counts_and_rates_are_one_line(tmp_path, edit, match):
    text = TINY.read_text()
    assert edit[0] in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(InputError, match=match) as error:
        load_rules_config(path)
    assert "\n" not in str(error.value)


def test_a_legacy_table_of_other_settings_is_refused(tiny_run, tmp_path):
    """Rows without markers carry their settings' fingerprint as the key's last part."""
    whole = (tiny_run / "rules.csv").read_text()
    stamp = whole.splitlines()[1].split(",")[0].rsplit("|", 1)[1]
    legacy = "".join(line for line in whole.splitlines(True) if not line.startswith(MARKER))
    out = _copy(tiny_run, tmp_path / "other", legacy.replace(stamp, "0" * len(stamp)))
    with pytest.raises(InputError, match="computed under other settings"):
        run_rules_sweep(TINY, out, progress_lines=False)
    assert "#unit" not in (out / "rules.csv").read_text()
