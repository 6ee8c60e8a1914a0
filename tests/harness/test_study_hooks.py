"""The study mechanism's hooks (prepare, state files, parts, report order), and its disk checks."""

import json
import os

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import atomic_write_bytes, atomic_write_json
from sublim_theory.harness.study import (
    MAX_SEEDS,
    PART,
    PartsStore,
    Study,
    parts_store,
    run_study,
    seed_range,
    split_parts,
    usable_cache,
)


def quiet(*args):
    pass


def test_parts_store_round_trip_and_legacy_records(tmp_path):
    store = PartsStore(
        tmp_path, "fp", lambda s: f"seed-{s}.json", parts=("steps",), key_name="seed"
    )
    rows = [{"seed": 0, "value": 1.0}, {"seed": 0, "step": 1, "cos": 0.5, PART: "steps"}]
    store.put(0, rows)
    record = json.loads(store.path(0).read_text())
    assert record["seed"] == 0 and record["fingerprint"] == "fp"
    assert record["rows"] == [{"seed": 0, "value": 1.0}]
    assert record["steps"] == [{"seed": 0, "step": 1, "cos": 0.5}]
    assert store.get(0) == rows
    assert split_parts(store.get(0), ("steps",)) == [
        [rows[0]],
        [{"seed": 0, "step": 1, "cos": 0.5}],
    ]
    # a record written before records carried a fingerprint (the old seeds/seed-S.json)
    legacy = {"seed": 1, "rows": [{"seed": 1, "value": None}], "steps": [{"step": 1}]}
    atomic_write_json(store.path(1), legacy)
    with pytest.raises(InputError, match="no settings fingerprint"):
        store.get(1)
    old = PartsStore(tmp_path, "fp", store.file_name, True, parts=("steps",), key_name="seed")
    main, steps = split_parts(old.get(1), ("steps",))
    assert main[0]["value"] != main[0]["value"] and steps == [{"step": 1}]  # null -> NaN
    # a record that lost a part is refused, not read as a unit without steps
    atomic_write_json(store.path(2), {"unit": 2, "fingerprint": "fp", "rows": [{"a": 1}]})
    with pytest.raises(InputError, match="seed-2.json' has no list of 'steps' rows"):
        store.get(2)
    with pytest.raises(ValueError, match="unknown part"):
        store.put(3, [{"a": 1}, {"a": 2, PART: "other"}])


def _toy(calls, *, prepare=None, state_files=(), report_key=None, units=(0, 1, 2)):
    def run_unit(unit, context):
        calls.append(unit)
        return [{"unit": unit}]

    def report(out, rows):
        return ",".join(str(r["unit"]) for r in rows)

    return Study(
        "toy",
        {"k": 1},
        list(units),
        run_unit,
        report,
        prepare=prepare,
        state_files=state_files,
        report_key=report_key,
    )


def test_prepare_runs_once_before_the_units_and_sees_what_is_stored(tmp_path):
    calls, seen = [], []

    def prepare(context, stored):
        seen.append((list(calls), {k: v is not None for k, v in stored.items()}))
        (context.out / "chosen.json").write_text("{}")

    run_study(_toy(calls, prepare=prepare, units=(0,)), tmp_path, log=quiet)
    run_study(_toy(calls, prepare=prepare, units=(0, 1)), tmp_path, log=quiet)
    assert seen == [([], {"0": False}), ([0], {"0": True, "1": False})]
    assert calls == [0, 1]


def test_a_state_file_without_run_json_is_refused(tmp_path):
    study = _toy([], state_files=("chosen.json",))
    (tmp_path / "chosen.json").write_text("{}")
    with pytest.raises(InputError, match=r"chosen.json\) but no run.json"):
        run_study(study, tmp_path, log=quiet)


def test_report_key_orders_the_rows_the_report_reads(tmp_path):
    units = ["b-1", "a-2", "a-10"]
    computed = run_study(_toy([], units=units), tmp_path / "plain", log=quiet)
    ordered = run_study(_toy([], units=units, report_key=str), tmp_path / "sorted", log=quiet)
    assert computed == "b-1,a-2,a-10" and ordered == "a-10,a-2,b-1"


def test_seed_range_is_bounded():
    assert seed_range(3, 2) == [3, 4]
    for first, count in ((0, 0), (0, MAX_SEEDS + 1), (-1, 1), (2**31, 1), (0, 10**12)):
        with pytest.raises(InputError, match="--seed"):
            seed_range(first, count)


def test_a_cache_inside_the_output_folder_is_checked_after_the_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="--out .* is a file"):
        run_study(_toy([]), blocker, cache=blocker / "cache", log=quiet)
    calls = []
    run_study(_toy(calls), tmp_path / "out", cache=tmp_path / "out" / "cache", log=quiet)
    assert calls == [0, 1, 2] and (tmp_path / "out" / "cache").is_dir()


def test_a_full_cache_is_refused_before_any_compute(small_disk, tmp_path):
    calls = []
    small_disk.fill()
    with pytest.raises(InputError, match="cannot write the cache .*No space left"):
        run_study(_toy(calls), tmp_path / "out", cache=small_disk.path / "cache", log=quiet)
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_read_only_cache_is_refused_before_any_compute(small_disk, tmp_path):
    (small_disk.path / "cache").mkdir()
    small_disk.read_only()
    with pytest.raises(InputError, match="cannot write the cache"):
        usable_cache(small_disk.path / "cache")


def test_a_cache_without_room_for_one_model_is_refused(tmp_path):
    free = __import__("shutil").disk_usage(tmp_path).free
    with pytest.raises(InputError, match="bytes free, a cached model needs"):
        usable_cache(tmp_path / "cache", need_bytes=free * 2 + 2**40)
    assert usable_cache(tmp_path / "cache", need_bytes=1) == tmp_path / "cache"


def test_a_full_disk_names_the_file_and_leaves_nothing_behind(small_disk):
    target = small_disk.path / "table.md"
    atomic_write_bytes(target, b"old")
    small_disk.fill()
    with pytest.raises(InputError) as caught:  # one line naming the file (the CLI: exit 2)
        atomic_write_bytes(target, os.urandom(1 << 20))
    assert f"'{target}'" in str(caught.value) and "No space left" in str(caught.value)
    assert target.read_bytes() == b"old"  # the old file, whole
    assert sorted(p.name for p in small_disk.path.iterdir() if p.name != ".filler") == ["table.md"]


def test_a_unit_whose_store_fails_is_not_stored_and_earlier_units_are_kept(small_disk):
    calls = []

    def run_unit(unit, context):
        calls.append(unit)
        if unit == 1 and len(calls) == 2:  # the disk fills while the first run computes unit 1
            small_disk.fill()
        return [{"unit": unit}]

    study = Study("toy", {"k": 1}, [0, 1], run_unit, lambda out, rows: str(len(rows)))
    with pytest.raises(InputError, match="No space left") as caught:
        run_study(study, small_disk.path / "out", log=quiet)
    assert "unit-1.json'" in str(caught.value)
    units = small_disk.path / "out" / "units"
    assert sorted(p.name for p in units.iterdir()) == ["unit-0.json"]
    small_disk.free()
    calls.clear()
    assert run_study(study, small_disk.path / "out", log=quiet) == "2" and calls == [1]


def test_parts_store_is_pluggable_into_run_study(tmp_path):
    def run_unit(unit, context):
        return [{"u": unit}, {"u": unit, "s": 1, PART: "steps"}]

    study = Study(
        "toy",
        {},
        [0],
        run_unit,
        lambda out, rows: split_parts(rows, ("steps",)),
        store=parts_store(parts=("steps",)),
    )
    assert run_study(study, tmp_path, log=quiet) == [[{"u": 0}], [{"u": 0, "s": 1}]]
