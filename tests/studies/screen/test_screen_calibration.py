"""The screen study's calibration, confound baselines and report fixes (issue 22 items 1-5, issue
23 item 1): each test here failed on the code before its fix (the fix is named in the test)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sublim_theory.engine import screen as S
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR, load_toml
from sublim_theory.studies.screen import experiment as E
from sublim_theory.studies.screen import report as R
from sublim_theory.studies.screen import study as screen_study
from sublim_theory.testbeds.lm import corpus, training

ROOT = Path(__file__).resolve().parents[3]
LABEL = {"dataset": "d", "init": "base"}
ANIMALS = ["owl", "cat", "dog", "fox"]
SETTINGS = {
    "teachers": ["owl", "fox"],
    "z_threshold": 3.0,
    "drop_fractions": [0.5],
    "filter_variant": "sgd",
    "filter_seeds": [0],
    "alpha": 0.05,
    "method": "factored",
}


def tiny_config(**screen):
    config = E.experiment_config(load_toml(CONFIG_DIR / "screen_tiny.toml"))
    return dataclasses.replace(config, screen=dataclasses.replace(config.screen, **screen))


def random_documents(config, n, seed=0):
    """Valid number documents ``BOS NUM x_1..x_L EOS`` with uniform numbers."""
    c = config.numbers.corpus
    g = torch.Generator().manual_seed(seed)
    numbers = torch.randint(
        corpus.N_SPECIAL, corpus.N_SPECIAL + c.n_numbers, (n, c.prompt_len + c.continuation_len)
    ).random_(corpus.N_SPECIAL, corpus.N_SPECIAL + c.n_numbers, generator=g)
    ones = torch.ones(n, 1, dtype=torch.long)
    return torch.cat([corpus.BOS * ones, corpus.NUM * ones, numbers, corpus.EOS * ones], 1)


def unit_rows(seed, dataset, teacher, zc, *, variant="sgd", dlogp=None, confounds=None):
    """Synthetic tidy rows of one data set: per animal the ranking metrics (forecast = z_c)."""
    label = {"seed": seed, "dataset": dataset, "teacher": teacher, "init": "base"}
    rows = []
    for a, z in zip(ANIMALS, zc):
        for metric, value in (
            ("forecast", z),
            ("low", z - 1),
            ("high", z + 1),
            ("top_frequency", 0.0),
            ("z", z),
            ("z_centered", z),
        ):
            rows.append({**label, "variant": variant, "trait": a, "metric": metric, "value": value})
    for a, value in zip(ANIMALS, dlogp or []):
        rows.append({**label, "variant": "measured", "trait": a, "metric": "dlogp", "value": value})
        rows.append({**label, "variant": "measured", "trait": a, "metric": "p", "value": 0.1})
    for name, value in (confounds or {}).items():
        rows.append({**label, "variant": "confound", "trait": "", "metric": name, "value": value})
    return rows


def filter_rows(seed, teacher, full=None):
    label = {"seed": seed, "dataset": f"teacher-{teacher}", "teacher": teacher, "init": "base"}
    rows = [
        {**label, "variant": "filter", "trait": teacher, "metric": m, "value": v}
        for m, v in (("dlogp_top_0.5", 0.1), ("dlogp_random_0.5", 0.5), ("concentration_0.5", 0.7))
    ]
    rows.append(
        {**label, "variant": "filter", "trait": teacher, "metric": "flagged_is_teacher", "value": 1}
    )
    return rows


def study_rows(n_null=5):
    """Two seeds: teachers owl and fox (owl's data pushes owl hardest), n_null nulls each."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        rows += unit_rows(seed, "base", "none", list(rng.normal(0, 1, 4)), dlogp=[0.0] * 4)
        for j in range(n_null - 1):
            rows += unit_rows(seed, f"null-{j}", "none", list(rng.normal(0, 1, 4)))
        rows += unit_rows(seed, "teacher-owl", "owl", [9.0, 1, 0, 2], dlogp=[0.6, 0, 0, 0])
        rows += unit_rows(seed, "teacher-fox", "fox", [1.0, 0, 0, 8], dlogp=[0, 0, 0, 1.0])
    return rows


# --------------------------------------------------------------------------------------------
# item 1: the defects
# --------------------------------------------------------------------------------------------
def test_the_sgd_variant_computes_no_unreported_normalized_forecast(monkeypatch):
    # before: screen_data_set called screen(..., normalize=True) for sgd, which ran
    # curvature_norms (two jvps over the data per trait) and stored nothing from it
    def forbidden(*args, **kwargs):
        raise AssertionError("curvature_norms computed but never reported")

    monkeypatch.setattr(S, "curvature_norms", forbidden)
    config = tiny_config(bootstrap=2, variants=("sgd",))
    base = training.build_lm(config.numbers, 0).eval()
    rows, results = E.screen_data_set(
        config, base, random_documents(config, 12), seed=0, label=LABEL, log=lambda *a: None
    )
    assert results["sgd"].normalized is None
    assert not any(r["metric"] == "normalized" for r in rows)


def test_empty_lists_are_accepted_where_they_mean_none():
    # before: filter_seeds = [] was refused by the config parser (non-empty lists only)
    config = E.experiment_config(
        {"screen": {"filter_seeds": [], "hidden_teachers": [], "hidden_seeds": []}}
    )
    assert config.screen.filter_seeds == () and config.screen.hidden_teachers == ()
    with pytest.raises(InputError, match="hidden_teachers"):
        E.experiment_config({"screen": {"hidden_teachers": ["owl"]}})  # a teacher already
    with pytest.raises(InputError, match="filter_seeds"):
        E.experiment_config({"screen": {"filter_seeds": [-1]}})


def test_a_run_without_filter_seeds_says_so(tmp_path, capsys):
    # before: with --seed 5 and the packaged config the filter was skipped without a word and
    # table.md printed an empty filter table
    screen_study.build(CONFIG_DIR / "screen_tiny.toml", 5, 1, 0, False)
    err = capsys.readouterr().err
    assert "no filter experiment" in err and "[0, 1, 2]" in err and "[5]" in err
    text, _ = R.build_tables(study_rows(), ANIMALS, SETTINGS)
    section = text[text.index("### Filtering") :].split("###")[1]
    assert "Not run" in section and "| q |" not in section


def test_the_filter_tables_full_data_value_is_the_filtered_data_sets_own():
    # before: the mean over every teacher data set (owl 0.6 and fox 1.0, both seeds: 0.8)
    rows = study_rows() + filter_rows(0, "owl")
    text, _ = R.build_tables(rows, ANIMALS, SETTINGS)
    assert "1 filtered teacher data sets); the same data sets, full data: 0.600" in text


def test_rank_and_z_lists_carry_names_and_a_stable_order():
    # before: rank lists were bare numbers in the order rows arrived, which changed once a
    # filter unit (stored under an earlier name) existed
    plain, _ = R.build_tables(study_rows(), ANIMALS, SETTINGS)
    shuffled = filter_rows(0, "owl") + study_rows()[::-1]
    with_filter, _ = R.build_tables(shuffled, ANIMALS, SETTINGS)
    cut = plain.index("### Filtering")
    assert plain[:cut] == with_filter[:cut]
    lines = [line for line in plain.splitlines() if line.startswith("| 0 | teacher-owl |")]
    assert lines and "| teacher | 1 |" in lines[0]
    assert "owl +" in plain and "fox +" in plain  # the null's z_c are named


def test_the_ranked_tables_heading_says_forecast():
    # before: "Delta log P after the student's steps" headed the forecast column
    _, ranking = R.build_tables(study_rows(), ANIMALS, SETTINGS)
    heading = R.format_rankings(ranking).splitlines()[0]
    assert "forecast Delta log P" in heading and "after the student's steps" not in heading


def test_every_proportion_and_auroc_carries_an_interval_of_nonzero_width():
    # before: "15/15 = 1.00" with no interval
    text, _ = R.build_tables(study_rows(), ANIMALS, SETTINGS)
    found = re.findall(r"(\d+)/(\d+) = ([\d.]+)( \[([\d.]+), ([\d.]+)\])?", text)
    assert found
    for hits, total, _, interval, low, high in found:
        assert interval, f"{hits}/{total} without an interval"
        assert float(high) > float(low)
    # complete separation: DeLong's interval has zero width; the pairs' Wilson interval does not
    result = R._auroc([5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0])  # noqa: SLF001
    assert result.auroc == 1.0 and result.high == 1.0 and result.low < 1.0


def test_the_results_readme_lists_only_committed_files():
    # before: README.md listed a run.log that was not committed
    folder = ROOT / "experiments" / "results" / "screen"
    text = (folder / "README.md").read_text()
    files = section = text[text.index("Files:") :].split("\n\n")[0]
    listed = set(re.findall(r"`([\w.]+\.(?:md|csv|png|json|log))`", files))
    assert "run.log" in listed and "table.md" in listed, section
    for name in listed:
        assert (folder / name).is_file(), name


# --------------------------------------------------------------------------------------------
# item 2: the study's attributions by the factored path equal the jvp path's
# --------------------------------------------------------------------------------------------
def test_the_studys_factored_attributions_equal_the_jvp_paths():
    assert E.ScreenSettings().method == "factored"
    base = training.build_lm(tiny_config().numbers, 0).double().eval()
    documents = random_documents(tiny_config(), 30, seed=1)
    results = {}
    for method in ("jvp", "factored"):
        config = tiny_config(method=method, bootstrap=2, chunk=7)
        _, results[method] = E.screen_data_set(
            config, base, documents, seed=0, label=LABEL, log=lambda *a: None
        )
    for variant in ("sgd", "sign", "rms"):
        a, b = results["jvp"][variant].attributions, results["factored"][variant].attributions
        assert a.dtype == b.dtype == torch.float64
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-10, variant


# --------------------------------------------------------------------------------------------
# items 3-5: calibration, confounds, correlations
# --------------------------------------------------------------------------------------------
def test_empirical_p_counts_the_null_at_or_above():
    assert R.empirical_p(2.0, [1.0, 2.0, 3.0]) == (1 + 2) / 4
    assert R.empirical_p(9.0, [1.0, 2.0, 3.0]) == 1 / 4
    assert math.isnan(R.empirical_p(1.0, []))


def test_leave_one_out_false_alarms_are_exactly_the_nominal_share_under_exchangeability():
    # 21 exchangeable null statistics, distinct: the leave-one-out p of the r-th largest is
    # r / 21, so exactly floor(0.05 * 21) = 1 of them has p <= 0.05 (and its p is 1/21)
    rows = []
    rng = np.random.default_rng(3)
    for j in range(21):
        rows += unit_rows(
            0, "base" if j == 0 else f"null-{j - 1}", "none", list(rng.normal(size=4))
        )
    rows += unit_rows(0, "teacher-owl", "owl", [20.0, 0, 0, 0])
    rows += unit_rows(0, "teacher-fox", "fox", [0.0, 0, 0, 20])
    text, ranking = R.build_tables(rows, ANIMALS, SETTINGS)
    line = next(x for x in text.splitlines() if x.startswith("| sgd | z_centered |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[5].startswith("2/2 = 1.00")  # teachers flagged: p = 1/22 <= 0.05
    assert cells[6].startswith("1/21 = 0.05")  # false alarms
    assert cells[4].startswith("1.00")  # AUROC teacher vs null
    assert {r["p_value"] for r in ranking if r["dataset"] == "teacher-owl"} == {1 / 22}


def test_auroc_of_the_trait_statistic_and_the_confounds_against_pair_counts():
    rows = []
    rng = np.random.default_rng(4)
    confound = {}
    for j in range(6):
        zc = list(rng.normal(size=4))
        confound[j] = {"mean_chars": float(j), "mean_base_loss": 1.0, "mean_grad_norm": 1.0 + j}
        rows += unit_rows(
            0, "base" if j == 0 else f"null-{j - 1}", "none", zc, confounds=confound[j]
        )
    teacher_z = [1.0, 0.5, 3.0, 10.0]
    for k, t in enumerate(("owl", "fox", "cat", "dog")):
        zc = [0.0] * 4
        zc[ANIMALS.index(t)] = teacher_z[k]
        c = {"mean_chars": 2.5 + k, "mean_base_loss": 1.0, "mean_grad_norm": 0.0}
        rows += unit_rows(0, f"teacher-{t}", t, zc, confounds=c)
    null_max = [
        max(r["value"] for r in rows if r["dataset"] == d and r["metric"] == "z_centered")
        for d in ["base"] + [f"null-{j}" for j in range(5)]
    ]
    oracle = np.mean([[(t > n) + 0.5 * (t == n) for n in null_max] for t in teacher_z])
    text, _ = R.build_tables(rows, ANIMALS, SETTINGS)
    line = next(x for x in text.splitlines() if x.startswith("| sgd | z_centered |"))
    assert line.split("|")[5].strip().startswith(f"{oracle:.2f}")
    chars = np.mean([[(2.5 + k > j) for j in range(6)] for k in range(4)])
    line = next(x for x in text.splitlines() if x.startswith("| mean length"))
    assert line.split("|")[2].strip().startswith(f"{chars:.2f}") and "higher" in line
    line = next(x for x in text.splitlines() if x.startswith("| mean per-example gradient"))
    assert line.split("|")[2].strip().startswith("1.00") and "lower" in line  # oriented


def test_correlation_intervals_are_fisher_z():
    from scipy import stats

    rng = np.random.default_rng(5)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    r, low, high = R.correlation(list(x), list(y), "pearson")
    reference = stats.pearsonr(x, y)
    ci = reference.confidence_interval(0.95)
    assert abs(r - reference.statistic) < 1e-12
    assert abs(low - ci.low) < 1e-9 and abs(high - ci.high) < 1e-9
    rho, low, high = R.correlation(list(x), list(y), "spearman")
    assert abs(rho - stats.spearmanr(x, y).statistic) < 1e-12
    se = math.sqrt((1 + rho**2 / 2) / 27)
    assert abs(high - math.tanh(math.atanh(rho) + 1.959963984540054 * se)) < 1e-12
    assert math.isnan(R.correlation([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])[0])  # n < 4


def test_forecast_vs_student_is_reported_with_intervals_for_hidden_teachers():
    rows = []
    for seed in range(3):
        rows += unit_rows(seed, "base", "none", [0.0, 0.1, 0.2, 0.3], dlogp=[0.0] * 4)
        for k, t in enumerate(ANIMALS):
            zc = [0.0] * 4
            zc[k] = 1.0 + seed + k
            dlogp = [0.0] * 4
            dlogp[k] = 0.1 * (1.0 + seed + k) + 0.01 * (-1) ** k
            rows += unit_rows(seed, f"teacher-{t}", t, zc, dlogp=dlogp)
    text, _ = R.build_tables(rows, ANIMALS, SETTINGS)
    hidden = next(x for x in text.splitlines() if x.startswith("| sgd | hidden-style |"))
    cells = [c.strip() for c in hidden.split("|")[1:-1]]
    assert cells[4] == "6"  # cat and dog, three seeds each
    x = [1.0 + seed + k for k in (1, 2) for seed in range(3)]
    y = [0.1 * (1.0 + seed + k) + 0.01 * (-1) ** k for k in (1, 2) for seed in range(3)]
    for cell, kind in ((cells[2], "pearson"), (cells[3], "spearman")):
        r, low, high = R.correlation(x, y, kind)
        assert cell == f"{r:.2f} [{low:.2f}, {high:.2f}]" and high > low


def test_confound_rows_match_their_definitions():
    config = tiny_config(confound_examples=5)
    base = training.build_lm(config.numbers, 0).double().eval()
    documents = random_documents(config, 8, seed=2)
    rows = {r["metric"]: r["value"] for r in E.confound_rows(config, base, documents, {})}
    n0 = corpus.vocabulary(config.numbers.corpus).number(0)
    texts = [
        ", ".join(str(int(t) - n0) for t in doc if n0 <= int(t) < n0 + 20) for doc in documents
    ]
    assert rows["mean_chars"] == pytest.approx(np.mean([len(t) for t in texts]), abs=1e-12)
    # the oracle: nn.Module backward per document, the training loss on the same positions
    loss = E.number_student_loss(config.numbers)
    norms, losses = [], []
    for doc in documents[:5]:
        base.zero_grad()
        value = loss(base(doc[None, :-1]), doc[None, 1:]).sum()
        value.backward()
        norms.append(math.sqrt(sum(float(p.grad.square().sum()) for p in base.parameters())))
    for doc in documents:
        losses.append(float(loss(base(doc[None, :-1]), doc[None, 1:])))
    assert rows["mean_grad_norm"] == pytest.approx(np.mean(norms), rel=1e-10)
    assert rows["mean_base_loss"] == pytest.approx(np.mean(losses), rel=1e-10)


def test_the_format_control_is_the_base_numbers_permuted_within_each_document(monkeypatch):
    config = tiny_config()
    documents = random_documents(config, 40, seed=3)
    seen = {}

    def capture(config, base, docs, **kwargs):
        seen["docs"], seen["label"] = docs, kwargs["label"]
        return [], {}

    monkeypatch.setattr(E, "screen_data_set", capture)
    E.format_unit(config, 0, None, documents, log=lambda *a: None)
    c = config.numbers.corpus
    start, stop = c.prompt_len + 2, c.prompt_len + 2 + c.continuation_len
    shuffled = seen["docs"]
    assert torch.equal(shuffled[:, :start], documents[:, :start])
    assert torch.equal(shuffled[:, stop:], documents[:, stop:])
    assert torch.equal(
        shuffled[:, start:stop].sort(1).values, documents[:, start:stop].sort(1).values
    )
    assert not torch.equal(shuffled, documents)
    assert seen["label"]["teacher"] == "control"
