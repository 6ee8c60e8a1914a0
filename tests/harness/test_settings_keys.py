"""The settings check compares every key of either run (issue 24 item 7: comparing only the
keys both runs have let a rerun that adds or drops a setting pool its rows)."""

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import OutputFolder


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, r"b: '<unset>' -> 2"),
        ({"a": 1, "b": 2}, {"a": 1}, r"b: 2 -> '<unset>'"),
        ({"m": {"x": 1}}, {"m": {"x": 1, "y": 0}}, r"m.y: '<unset>' -> 0"),
    ],
)
def test_a_rerun_that_adds_or_drops_a_setting_is_refused(tmp_path, first, second, message):
    with OutputFolder(tmp_path, "toy") as folder:
        folder.check_settings(first)
    with OutputFolder(tmp_path, "toy") as folder, pytest.raises(InputError, match=message):
        folder.check_settings(second)
    with OutputFolder(tmp_path, "toy") as folder:
        folder.check_settings(first)  # the same settings again: accepted
