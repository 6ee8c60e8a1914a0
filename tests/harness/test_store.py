import json

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness.store import MARKER, CsvAppendStore, UnitStore


def test_unit_store_round_trip_and_refusals(tmp_path):
    store = UnitStore(tmp_path / "units", "fp1")
    assert store.get(3) is None
    store.put(3, [{"a": 1.5, "b": "x"}])
    assert store.get(3) == [{"a": 1.5, "b": "x"}]
    record = json.loads(store.path(3).read_text())
    assert record["fingerprint"] == "fp1" and record["unit"] == 3
    # other settings: refused, naming the file
    with pytest.raises(InputError, match="other settings"):
        UnitStore(tmp_path / "units", "fp2").get(3)
    # a record with no rows is not a finished unit (was silently dropped before)
    store.path(4).write_text(json.dumps({"unit": 4, "fingerprint": "fp1", "rows": []}))
    with pytest.raises(InputError, match="holds no rows"):
        store.get(4)
    for text in ("{", "", '{"unit": 5}', "\x00\xff"):
        store.path(5).write_text(text)
        with pytest.raises(InputError, match="unit-5.json"):
            store.get(5)
    # a record without a fingerprint: refused unless the caller matched run.json (legacy)
    store.path(6).write_text(json.dumps({"seed": 6, "rows": [{"a": 1}]}))
    with pytest.raises(InputError, match="no settings fingerprint"):
        store.get(6)
    assert UnitStore(tmp_path / "units", "fp1", legacy=True).get(6) == [{"a": 1}]
    with pytest.raises(ValueError):
        store.put(7, [])


def test_csv_store_counts_a_unit_done_only_with_its_marker(tmp_path):
    path = tmp_path / "rows.csv"
    store = CsvAppendStore(path, ["unit", "value"], "fp")
    store.append("a", [{"unit": "a", "value": 1}, {"unit": "a", "value": 2}])
    store.append("b", [{"unit": "b", "value": 3}])
    full = path.read_text()
    assert store.load() == {
        "a": [{"unit": "a", "value": "1"}, {"unit": "a", "value": "2"}],
        "b": [{"unit": "b", "value": "3"}],
    }
    # a unit cut at a row boundary (rows present, marker absent) is NOT done; it is dropped
    lines = full.splitlines(keepends=True)
    cut = "".join(lines[:-1])  # b's row without its marker
    path.write_text(cut)
    messages = []
    assert set(store.load(messages.append)) == {"a"}
    assert messages and "incomplete unit" in messages[0]
    assert path.read_text() == "".join(lines[:4])  # header, a's two rows and marker
    # a torn last line (no newline) is dropped too, and the next append starts on a new line
    path.write_text(full[:-7])
    assert set(store.load()) == {"a"}
    store.append("b", [{"unit": "b", "value": 3}])
    assert path.read_text() == full
    # another fingerprint or a marker whose count disagrees is refused
    with pytest.raises(InputError, match="other settings"):
        CsvAppendStore(path, ["unit", "value"], "other").load()
    path.write_text(full.replace(f"{MARKER},b,1,fp", f"{MARKER},b,2,fp"))
    with pytest.raises(InputError, match="marker says 2"):
        store.load()
    with pytest.raises(InputError, match="columns"):
        CsvAppendStore(path, ["x"], "fp").load()
