"""The screen rows of ``bench``: one-epoch equivalents of the jvp and factored screens."""

import json
import math

import pytest

from sublim_theory.errors import InputError
from sublim_theory.studies.bench.experiment import run_benchmarks
from sublim_theory.studies.bench.screen import (
    SCREEN_SIZES,
    bench_screen,
    number_documents,
    token_probes,
)
from sublim_theory.testbeds.lm import corpus

# float32 attributions on both paths, summed in different orders through a few layers: a few
# hundred roundings of float32 (u = 6e-8) relative to the largest attribution
FLOAT32_GAP = 1e-4


def test_screen_rows_time_both_paths_against_one_epoch():
    rows = bench_screen("tiny", "cpu", (1, 3), rounds=1)
    assert [r["path"] for r in rows] == [
        "training_epoch[1]",
        "screen_jvp[1]",
        "screen_factored[1]",
        "training_epoch[3]",
        "screen_jvp[3]",
        "screen_factored[3]",
    ]
    for row in rows:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    epoch = {r["path"]: r["seconds"] for r in rows if r["path"].startswith("training")}
    for row in (r for r in rows if r["path"].startswith("screen")):
        k = row["path"].split("[")[1]
        assert row["ratio"] == pytest.approx(row["seconds"] / epoch[f"training_epoch[{k}"])
        assert row["max_relative_difference"] <= FLOAT32_GAP


def test_bench_marks_the_screen_targets(tmp_path):
    paths = run_benchmarks(tmp_path, "tiny", "cpu", ("float32",), (), 0, 0, 1, screen_traits=(10,))
    record = json.loads(paths[0].read_text())
    assert [(v["path"], v["target"]) for v in record["verdicts"]] == [
        ("screen_factored[10]", "<= 1.5")
    ]
    assert "| screen_jvp[10] |" in paths[2].read_text()


def test_documents_and_probes_are_what_the_rows_say():
    config = SCREEN_SIZES["tiny"]["config"]
    documents = number_documents(config, 8)
    kept, _ = corpus.filter_numbers(documents, config.corpus)
    assert kept.shape == documents.shape  # well-formed number documents
    probes = token_probes(config, 30)
    vocab = corpus.vocabulary(config.corpus)
    assert len(probes) == 30 and len({p.name for p in probes}) == 30
    assert probes[0].name.startswith(f"token{vocab.animal(config.corpus.animals[0])}#")


def test_bad_screen_arguments(tmp_path):
    with pytest.raises(InputError, match="screen-traits"):
        run_benchmarks(tmp_path, "tiny", "cpu", screen_traits=(0,))
    with pytest.raises(InputError, match="unknown benchmark size"):
        bench_screen("huge", "cpu")
    with pytest.raises(InputError, match="screen traits"):
        bench_screen("tiny", "cpu", (1,), rounds=0)
