"""harness.runs.read_csv: the one CSV reader, a column schema parsing the cells."""

import pytest

from sublim_theory.harness.runs import atomic_write_csv, read_csv

ROWS = [{"group": "a", "model": 0, "value": 0.25}, {"group": "b", "model": 1, "value": -1.5}]


def test_a_written_table_reads_back_by_its_schema(tmp_path):
    path = tmp_path / "t.csv"
    atomic_write_csv(path, ROWS, ["group", "model", "value"])
    assert read_csv(path, {"model": int, "value": float}) == ROWS
    assert read_csv(path, {"group": str, "model": int}, other=float) == ROWS
    assert read_csv(path) == [{k: str(v) for k, v in row.items()} for row in ROWS]


def test_a_schema_column_the_file_lacks_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    atomic_write_csv(path, ROWS, ["group", "model", "value"])
    with pytest.raises(KeyError):
        read_csv(path, {"seed": int})


def test_strict_columns_refuse_another_header_and_a_cut_row(tmp_path):
    path = tmp_path / "t.csv"
    columns = ("group", "model", "value")
    path.write_text("group,model,value\na,0,0.25\nb,1\n")
    with pytest.raises(ValueError, match="cut row"):
        read_csv(path, columns=columns)
    path.write_text("group,model\na,0\n")
    with pytest.raises(ValueError, match="other columns"):
        read_csv(path, columns=columns)
    path.write_text("group,model,value\na,0,0.25\n")
    assert read_csv(path, {"model": int, "value": float}, columns=columns) == ROWS[:1]
