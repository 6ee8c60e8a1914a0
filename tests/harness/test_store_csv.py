"""The CSV-append store under a full disk, a cut file and a legacy file (issue 24, items 1 and 4).

A full disk is tried twice: on a real 16 KiB tmpfs where this machine lets us mount one (root),
and by an ``os.write`` that writes part of its bytes and then raises ENOSPC (everywhere).
"""

import errno
import json
import os
import subprocess
import uuid

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.harness.runs import append_durably, atomic_write_text
from sublim_theory.harness.store import MARKER, CsvAppendStore, UnitStore, is_marker

COLUMNS = ["unit", "value"]


def _rows(unit, n=3):
    return [{"unit": unit, "value": 0.1 * i + unit} for i in range(n)]


def test_get_put_read_back_what_a_fresh_load_reads(tmp_path):
    store = CsvAppendStore(tmp_path / "t.csv", COLUMNS, "fp")
    assert store.get(0) is None
    store.put(0, _rows(0))
    store.put(1, _rows(1, 2))
    fresh = CsvAppendStore(tmp_path / "t.csv", COLUMNS, "fp")
    assert fresh.get(0) == store.get(0) == [{"unit": "0", "value": repr(0.1 * i)} for i in range(3)]
    assert fresh.get(1) == store.get(1) and fresh.get(2) is None
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert [line.startswith(MARKER) for line in lines] == [False] * 4 + [True] + [False] * 2 + [
        True
    ]
    assert is_marker(lines[4].split(",")) and not is_marker(lines[1].split(","))


def _partial_write(monkeypatch, allow):
    """``os.write`` that writes at most ``allow`` more bytes in all, then raises ENOSPC."""
    real = os.write
    left = [allow]

    def write(descriptor, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = real(descriptor, bytes(data[: left[0]]))
        left[0] -= written
        return written

    monkeypatch.setattr(os, "write", write)


def test_injected_enospc_names_the_file_and_leaves_no_half_unit(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    store = CsvAppendStore(path, COLUMNS, "fp")
    store.put(0, _rows(0))
    before = path.read_bytes()
    _partial_write(monkeypatch, 10)  # the next unit gets 10 bytes on disk, then the disk is full
    with pytest.raises(InputError) as error:
        store.put(1, _rows(1))
    message = str(error.value)
    assert f"'{path}'" in message and "No space left on device" in message
    assert "\n" not in message
    assert path.read_bytes() == before  # cut back: nothing half-written
    monkeypatch.undo()
    store = CsvAppendStore(path, COLUMNS, "fp")
    assert store.get(1) is None
    store.put(1, _rows(1))
    straight = CsvAppendStore(tmp_path / "straight.csv", COLUMNS, "fp")
    straight.put(0, _rows(0))
    straight.put(1, _rows(1))
    assert path.read_bytes() == (tmp_path / "straight.csv").read_bytes()


def test_injected_enospc_in_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "table.md"
    atomic_write_text(path, "old\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match=r"cannot write '.*table.md' \(No space left"):
        atomic_write_text(path, "new\n" * 1000)
    with pytest.raises(InputError, match="unit-3.json"):
        UnitStore(tmp_path / "units", "fp").put(3, [{"a": 1}])
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md", "units"]  # no temp files
    assert list((tmp_path / "units").iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 16 KiB tmpfs (root only); skipped where it cannot be mounted."""
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the injected ENOSPC covers it")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_real_full_disk_keeps_whole_units_and_resumes(small_disk, tmp_path):
    path = small_disk / "t.csv"
    store = CsvAppendStore(path, COLUMNS, "fp")
    units, unit = [], 0
    with pytest.raises(InputError, match="No space left on device") as error:
        while True:
            store.put(unit, _rows(unit, 40))
            units.append(unit)
            unit += 1
    assert f"'{path}'" in str(error.value)
    assert len(units) >= 2
    text = path.read_text()
    assert text.endswith("\n") and text.splitlines()[-1].startswith(f"{MARKER},{units[-1]},40,")
    assert list(CsvAppendStore(path, COLUMNS, "fp").load()) == [str(u) for u in units]
    # the rerun on a larger disk gives the file an uninterrupted run writes
    moved = tmp_path / "t.csv"
    moved.write_text(text)
    store = CsvAppendStore(moved, COLUMNS, "fp")
    for u in range(unit + 1):
        if store.get(u) is None:
            store.put(u, _rows(u, 40))
    straight = CsvAppendStore(tmp_path / "straight.csv", COLUMNS, "fp")
    for u in range(unit + 1):
        straight.put(u, _rows(u, 40))
    assert moved.read_bytes() == (tmp_path / "straight.csv").read_bytes()


def _legacy_split(rows):
    units, start = [], 0
    while start < len(rows):
        unit = rows[start]["unit"]
        count = sum(1 for r in rows[start:] if r["unit"] == unit)
        if count < 3:
            break  # the legacy writer wrote 3 rows per unit: fewer is a cut unit
        units.append((unit, 3))
        start += 3
    return units


def test_a_legacy_file_gets_its_markers_once_and_keeps_its_lines(tmp_path):
    path = tmp_path / "t.csv"
    data = "".join(f"{u},{0.1 * i + u!r}\n" for u in range(3) for i in range(3))
    path.write_text("unit,value\n" + data + "3,3.0\n")  # unit 3 was cut after one row
    with pytest.raises(InputError, match="no unit markers"):
        CsvAppendStore(path, COLUMNS, "fp").load()
    notes = []
    store = CsvAppendStore(path, COLUMNS, "fp", legacy=_legacy_split, log=notes.append)
    assert list(store.load()) == ["0", "1", "2"]
    assert notes == [
        f"{path}: marked the 3 units of a legacy file, dropped 1 rows of an incomplete unit"
    ]
    lines = path.read_text().splitlines(keepends=True)
    assert "".join(line for line in lines[1:] if not line.startswith(MARKER)) == data
    migrated = path.read_bytes()
    notes.clear()
    assert list(CsvAppendStore(path, COLUMNS, "fp", legacy=_legacy_split).load()) == ["0", "1", "2"]
    assert path.read_bytes() == migrated and notes == []


def test_malformed_markers_and_binary_files_are_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(f"unit,value\n0,1\n{MARKER},0,one,fp\n")
    with pytest.raises(InputError, match="line 3 is a malformed unit marker"):
        CsvAppendStore(path, COLUMNS, "fp").load()
    path.write_bytes(b"unit,value\n\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        CsvAppendStore(path, COLUMNS, "fp").load()
    path.write_text("unit,va")  # a torn header: nothing stored yet
    assert CsvAppendStore(path, COLUMNS, "fp").load() == {}
    assert path.read_text() == ""


def test_append_durably_failing_to_open_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"cannot write '.*missing/t.csv'"):
        append_durably(tmp_path / "missing" / "t.csv", "a\n")
    assert runs.write_failure("x", OSError(errno.EROFS, "Read-only file system")).startswith(
        "cannot write 'x' (Read-only file system)"
    )


def test_unit_store_reads_legacy_records_of_another_shape(tmp_path):
    store = UnitStore(tmp_path, "fp", legacy=lambda unit, record: [{"unit": unit, **record}])
    (tmp_path / "unit-1.json").write_text(json.dumps({"config": {"m": 3}, "teacher": [0.9]}))
    assert store.get(1) == [{"unit": 1, "config": {"m": 3}, "teacher": [0.9]}]
    strict = UnitStore(tmp_path, "fp")
    with pytest.raises(InputError, match="unreadable"):
        strict.get(1)
