import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness.study import Study, run_study


def _study(calls, n=4, scale=1.0, fail_at=None):
    def run_unit(unit, context):
        if unit == fail_at:
            raise KeyboardInterrupt
        calls.append(unit)
        return [{"unit": unit, "value": scale * unit * unit}]

    def report(out, rows):
        text = "\n".join(f"{r['unit']},{r['value']}" for r in rows)
        (out / "table.md").write_text(text + "\n")
        return text

    return Study("toy", {"scale": scale}, list(range(n)), run_unit, report)


def test_resume_computes_only_missing_units_and_equals_an_uninterrupted_run(tmp_path):
    calls = []
    whole = run_study(_study(calls), tmp_path / "whole", log=lambda *a: None)
    assert calls == [0, 1, 2, 3]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_study(_study(calls, fail_at=2), tmp_path / "cut", log=lambda *a: None)
    assert calls == [0, 1]
    calls.clear()
    resumed = run_study(_study(calls), tmp_path / "cut", log=lambda *a: None)
    assert calls == [2, 3] and resumed == whole
    assert (tmp_path / "cut" / "table.md").read_text() == (
        tmp_path / "whole" / "table.md"
    ).read_text()
    record = json.loads((tmp_path / "cut" / "units" / "unit-2.json").read_text())
    assert record["fingerprint"] and record["rows"] == [{"unit": 2, "value": 4.0}]


def test_other_settings_and_lost_run_json_are_refused(tmp_path):
    run_study(_study([]), tmp_path, log=lambda *a: None)
    with pytest.raises(InputError, match="other settings"):
        run_study(_study([], scale=2.0), tmp_path, log=lambda *a: None)
    (tmp_path / "run.json").unlink()
    with pytest.raises(InputError, match="no run.json"):
        run_study(_study([], scale=2.0), tmp_path, log=lambda *a: None)


def test_a_record_written_under_other_settings_is_refused(tmp_path):
    run_study(_study([]), tmp_path / "a", log=lambda *a: None)
    run_study(_study([], scale=2.0), tmp_path / "b", log=lambda *a: None)
    os.replace(tmp_path / "b" / "units" / "unit-1.json", tmp_path / "a" / "units" / "unit-1.json")
    with pytest.raises(InputError, match="unit-1.json' was computed under other settings"):
        run_study(_study([]), tmp_path / "a", log=lambda *a: None)


def test_bad_cache_is_one_line_before_any_compute(tmp_path):
    calls = []
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        run_study(_study(calls), tmp_path / "out", cache=tmp_path / "file")
    assert calls == [] and not (tmp_path / "out").exists()


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_table(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, sys
        from sublim_theory.harness.study import Study, run_study
        def run_unit(unit, context):
            if unit == 3 and len(sys.argv) > 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return [{"unit": unit, "value": unit + 0.5}]
        def report(out, rows):
            return ";".join(str(r["value"]) for r in rows)
        print(run_study(Study("toy", {"k": 1}, list(range(6)), run_unit, report), sys.argv[1]))
        """
    )
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a"), "kill"])
    assert killed.returncode == -signal.SIGKILL
    resumed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a")], capture_output=True, text=True
    )
    whole = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "b")], capture_output=True, text=True
    )
    assert resumed.stdout == whole.stdout == "0.5;1.5;2.5;3.5;4.5;5.5\n"


def test_report_only_computes_nothing_and_keeps_the_computing_runs_record(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_study(_study(calls, fail_at=2), tmp_path, log=lambda *a: None)
    environment = (tmp_path / "environment.json").read_text()
    (tmp_path / "table.md").unlink()
    calls.clear()
    lines = []
    text = run_study(_study(calls), tmp_path, log=lines.append, report_only=True)
    assert calls == [] and text == "0,0.0\n1,1.0"
    assert (tmp_path / "table.md").read_text() == text + "\n"
    assert any("2: not computed (report only)" in line for line in lines)
    assert (tmp_path / "environment.json").read_text() == environment


def test_prepare_is_told_when_the_run_only_rebuilds_the_report(tmp_path):
    seen = []

    def prepare(context, stored):
        seen.append((context.report_only, sorted(k for k, rows in stored.items() if rows)))

    def study():
        return dataclasses.replace(_study([], n=2), prepare=prepare)

    run_study(study(), tmp_path, log=lambda *a: None)
    run_study(study(), tmp_path, log=lambda *a: None, report_only=True)
    assert seen == [(False, []), (True, ["0", "1"])]
