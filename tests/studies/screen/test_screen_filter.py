"""Two screen statistics the suite missed (issue 24 item 7): the bootstrap interval's level and
the filter's direction (it must drop the documents pushing HARDEST toward the flagged trait)."""

import math
from types import SimpleNamespace

import torch

from sublim_theory.engine import screen as S
from sublim_theory.harness.runs import CONFIG_DIR, load_toml
from sublim_theory.studies.screen import experiment as screen_study
from sublim_theory.testbeds.lm import training


def test_bootstrap_interval_is_95_percent_of_the_mean():
    """Oracle: for N(0, 1) attributions the bootstrap distribution of the mean is normal with sd
    s / sqrt(n), so the 95% percentile interval is mean +- 1.960 s / sqrt(n) (a 90% one would be
    +- 1.645: 16% narrower). Error model: the Monte Carlo sd of a 2.5% quantile from B = 4000
    resamples is sqrt(p (1 - p) / B) / phi(1.96) = 0.042 sd of the mean, 2.2% of the
    half-width; tolerance 7% (3 sd) still separates 95% from 90% by more than 2x."""
    n, resamples = 400, 4000
    values = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low, high, _ = S.bootstrap_means(values, resamples, seed=1)
    mean, sd = values.mean(0), values.std(0)
    half = 1.959964 * sd / math.sqrt(n)
    for k in range(2):
        assert abs((high[k] - low[k]) / 2 / half[k] - 1) < 0.07
        assert abs((high[k] + low[k]) / 2 - mean[k]) < 0.1 * half[k]


def test_the_filter_drops_the_documents_pushing_hardest_toward_the_flagged_trait(monkeypatch):
    config = screen_study.experiment_config(load_toml(CONFIG_DIR / "screen_tiny.toml"))
    names = list(config.numbers.corpus.animals)
    animal, n = config.screen.teachers[0], 20
    documents = torch.arange(n).unsqueeze(1)  # document i is the row [i]
    attributions = torch.zeros(n, len(names), dtype=torch.float64)
    pushes = torch.randperm(n, generator=torch.Generator().manual_seed(2)).double()
    attributions[:, names.index(animal)] = pushes
    ranking = [animal, *[a for a in names if a != animal]]
    result = SimpleNamespace(ranking=ranking, attributions=attributions)
    variant = config.screen.filter_variant
    monkeypatch.setattr(screen_study, "screen_data_set", lambda *a, **k: ([], {variant: result}))
    monkeypatch.setattr(
        screen_study, "_log_probabilities", lambda model, numbers: torch.zeros(len(names))
    )
    trained = []

    def train_student(base, data, numbers, seed):
        trained.append(sorted(int(x) for x in data[:, 0]))
        return SimpleNamespace(model=None)

    monkeypatch.setattr(training, "train_student", train_student)
    screen_study.filter_unit(config, 0, animal, base=None, documents=documents, log=lambda *a: 0)
    fractions = config.screen.drop_fractions
    assert len(trained) == 2 * len(fractions)  # "top" then "random" per fraction
    for q, kept in zip(fractions, trained[::2]):
        drop = round(q * n)
        expected = sorted(int(i) for i in torch.argsort(pushes)[: n - drop])  # the weakest
        assert kept == expected, q
