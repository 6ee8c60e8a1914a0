"""The sign-step population study: a tiny run end to end, its statistics against independent
oracles (scipy's beta quantiles and exact binomial tails, sklearn's AUROC and logistic fit, the
O(mn) definition of DeLong's variance), the explicit K against the reference oracle, and a
constructed problem whose sign step provably raises the trait loss (float64)."""

import json
import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.stats import beta
from torch import nn

from sublim_theory.cli.main import main
from sublim_theory.engine.alignment import TeacherTask
from sublim_theory.engine.functional import FunctionalModel
from sublim_theory.engine.lora import add_lora
from sublim_theory.engine.losses import make_loss
from sublim_theory.engine.update_rules import make_rule
from sublim_theory.errors import InputError
from sublim_theory.harness import runs
from sublim_theory.models.architectures import build_model, make_inputs
from sublim_theory.studies.sign_population import experiment as study
from sublim_theory.testing.reference import explicit_gauss_newton

TINY = runs.config_file("sign_population_tiny")


def _command(out, capsys):
    """``sublim-theory sign-population`` on the tiny config into ``out``: its printed table."""
    capsys.readouterr()
    assert main(["sign-population", "--config", str(TINY), "--out", str(out)]) == 0
    return capsys.readouterr().out.removesuffix("\n")


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------
def test_tiny_run_end_to_end_and_resume(tmp_path, monkeypatch, capsys, tiny_config_run):
    config = study.load_config(TINY)
    run = tiny_config_run("sign_population_tiny")  # the session's one run (TINY_RUNS)
    assert run.code == 0, run.stderr
    text = run.stdout.removesuffix("\n")
    out = tmp_path / "run"
    shutil.copytree(run.out, out)
    blocks = study.units(config)
    problems = config.population + 2 * config.audit + config.readme
    table = (out / "sign_population.csv").read_text().splitlines()
    assert table[0].split(",") == list(study.COLUMNS)
    assert len(table) - 1 == problems * len(study.RULES)
    assert sorted(p.stem for p in (out / "units").iterdir()) == sorted(u["name"] for u in blocks)
    for name in ("rates.csv", "predictors.csv", "logistic.csv", "environment.json", "run.json"):
        assert (out / name).exists(), name
    assert (out / "table.md").read_text() == text
    # each stratum x rule appears in the rates table with an n that adds up
    rates = (out / "rates.csv").read_text().splitlines()
    strata_rows = [line for line in rates if line.startswith("stratum,")]
    assert len(strata_rows) == len(study.STRATA) * len(study.RULES)
    # the engine's K v agrees with the explicit K on every non-degenerate problem
    for unit in (out / "units").iterdir():
        for row in json.loads(unit.read_text())["rows"]:
            if not row["degenerate"]:
                assert row["k_v_oracle_error"] < 1e-10, row

    # a rerun skips every unit (run_unit must not be called) and rebuilds the same table
    def refuse(*_):
        raise AssertionError("a finished unit was run again")

    csv_text = (out / "sign_population.csv").read_text()
    monkeypatch.setattr(study, "run_unit", refuse)
    assert _command(out, capsys) == text
    # rows read back from the units' JSON (NaN as null) give the same CSV as fresh rows
    assert (out / "sign_population.csv").read_text() == csv_text


def test_unit_rows_are_deterministic():
    config = study.load_config(TINY)
    unit = study.units(config)[0]
    first, second = study.run_unit(config, unit), study.run_unit(config, unit)
    assert json.dumps(first, sort_keys=True, default=str) == json.dumps(
        second, sort_keys=True, default=str
    )


def test_draws_vary_and_bad_input_is_refused(tmp_path):
    config = study.SignPopulationConfig()
    specs = [study.draw_problem(config, "population", i) for i in range(60)]
    assert specs == [study.draw_problem(config, "population", i) for i in range(60)]
    for key in ("family", "channel", "parameterization", "teacher", "loss", "n_inputs"):
        assert len({str(s[key]) for s in specs}) > 1, key
    for s in specs:
        if s["channel"] == "aux":
            assert s["out_features"] - s["trait_classes"] >= 2
    with pytest.raises(InputError, match="unknown stratum"):
        study.draw_problem(config, "nope", 0)
    bad = tmp_path / "bad.toml"
    bad.write_text("populaton = 3\n")
    with pytest.raises(InputError, match="unknown key"):
        study.load_config(bad)
    bad.write_text('families = ["mlp_tanh", "vit"]\n')
    with pytest.raises(InputError, match="families"):
        study.load_config(bad)


# --------------------------------------------------------------------------------------------
# the constructed counterexample: a sign step that raises L_T, counted as a rise
# --------------------------------------------------------------------------------------------
def _two_parameter_problem(matrix, v):
    """f(theta, x) = x . theta (no bias), squared loss: K = mean x x^T exactly.

    Rows x_i = sqrt(2) L[:, i] for the Cholesky factor L of K give (1/2) sum x_i x_i^T = K. The
    trait is linear, L_T(theta) = -v . theta (one teacher input u = v, loss -z.sum()), so
    -grad L_T = v, the teacher is the gradient teacher, and Delta L_T = -v . step exactly.
    """
    net = nn.Linear(2, 1, bias=False).double()
    model = FunctionalModel(net)
    factor = torch.linalg.cholesky(matrix)
    inputs = math.sqrt(2) * factor.T.contiguous()
    task = TeacherTask(lambda z, _: -z.sum(), v.reshape(1, 2), torch.zeros(1))
    rules = {name: make_rule(name, 1e-3) for name in study.RULES}
    problem = study.Problem(
        model, model.flat_params(), task, inputs, make_loss("squared"), 1e-3, rules
    )
    return problem


def test_constructed_sign_step_rise_is_counted():
    matrix = torch.tensor([[10.0, 3.0], [3.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([0.5, -0.6], dtype=torch.float64)
    # K v = (3.2, 0.9): sign (1, 1), so <v, sign(K v)> = -0.1 < 0 while v^T K v = 1.06 > 0
    problem = _two_parameter_problem(matrix, v)
    predictors, rows = study.measure_problem(problem)
    assert predictors["k_v_oracle_error"] < 1e-14
    assert predictors["cos_signKv_v"] < 0 and predictors["cos_v_Kv"] > 0
    by_rule = {r["rule"]: r for r in rows}
    alpha = 1e-3
    # sign step alpha (1, 1): Delta L_T = -v . step = +0.1 alpha (linear trait: exact)
    assert by_rule["signsgd"]["change_exact"] == pytest.approx(0.1 * alpha, rel=1e-9)
    # sgd: -alpha eps v^T K v = -1.06e-6 (the gradient -eps K v is exact for a linear model)
    assert by_rule["sgd"]["change_exact"] == pytest.approx(-alpha * 1e-3 * 1.06, rel=1e-9)
    assert by_rule["signsgd"]["rose"] and by_rule["signsgd"]["rose_first_order"]
    assert by_rule["adam"]["rose"]  # eps |K v| >> Adam's 1e-8: Adam's first step is the sign step
    assert not by_rule["sgd"]["rose"] and not by_rule["sgd"]["rose_first_order"]
    assert all(r["resolved"] for r in rows)
    table = study.rate_rows(
        [{"stratum": "x", **predictors, **r} for r in rows],
        ["stratum"],
    )
    counts = {e["rule"]: (e["rises"], e["n"]) for e in table}
    assert counts == {"sgd": (0, 1), "adam": (1, 1), "signsgd": (1, 1)}


def test_equal_diagonal_two_by_two_cannot_rise():
    """K = [[1, -0.9], [-0.9, 1]]: |K_12| <= K_22, so sign(K v) keeps the sign of v's larger
    coordinate and <v, sign(K v)> >= 0 for every v (module docstring); the measured first-order
    change of the sign step is never positive."""
    matrix = torch.tensor([[1.0, -0.9], [-0.9, 1.0]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        v = torch.randn(2, generator=generator, dtype=torch.float64)
        _, rows = study.measure_problem(_two_parameter_problem(matrix, v))
        sign_row = next(r for r in rows if r["rule"] == "signsgd")
        assert not sign_row["rose"], (v, sign_row)


def test_diagonal_kernel_statistics():
    matrix = torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64))
    v = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    stats = study.kernel_statistics(matrix, v, matrix @ v)
    assert stats["k_offdiagonal_fraction"] == 0
    assert stats["k_rank"] == 2 and stats["k_condition"] == pytest.approx(4.0)
    assert stats["k_effective_rank"] == pytest.approx(25 / 17)
    assert stats["sign_disagreement"] == 0  # diagonal K keeps every sign of v
    ones = torch.ones(5, dtype=torch.float64)
    identity = study.kernel_statistics(torch.eye(5, dtype=torch.float64), ones, ones)
    assert identity["k_effective_rank"] == pytest.approx(5)


# --------------------------------------------------------------------------------------------
# the explicit K against the reference oracle
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "loss", "lora"),
    [
        ("mlp", make_loss("softmax_ce", outputs=[2, 3]), False),  # P > outputs: jacrev
        ("mlp", make_loss("kl", outputs=[0, 1, 2]), True),  # LoRA: P < outputs, jacfwd
        ("resmlp", make_loss("squared"), False),
    ],
)
def test_explicit_gauss_newton_matches_reference(arch, loss, lora):
    net = build_model(arch, 4, in_features=3, width=3, depth=1, seed=2)
    if lora:
        net = add_lora(net, 1, seed=3)
    model = FunctionalModel(net)
    theta = model.flat_params()
    inputs = make_inputs(arch, 5 if not lora else 40, in_features=3, seed=4)
    matrix = study.explicit_gauss_newton_matrix(model, theta, inputs, loss)
    expected = explicit_gauss_newton(model, theta, inputs, loss)
    scale = float(expected.abs().max())
    assert float((matrix - expected).abs().max()) <= 1e-13 * scale


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _binomial_tail(n, k, p, upper):
    """P(Bin(n, p) >= k) (upper) or P(Bin(n, p) <= k), in exact rationals of float p."""
    p = Fraction(p)
    terms = range(k, n + 1) if upper else range(0, k + 1)
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in terms))


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 40), (1, 40), (27, 300), (21, 300), (5, 5)])
def test_clopper_pearson_against_beta_quantiles_and_binomial_tails(k, n):
    low, high = study.clopper_pearson(k, n)
    expected_low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    expected_high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    assert low == pytest.approx(expected_low, rel=1e-10, abs=1e-15)
    assert high == pytest.approx(expected_high, rel=1e-10, abs=1e-15)
    assert low < k / n or k == 0
    assert high > k / n or k == n
    assert high - low > 0  # never a zero-width interval
    # the defining property: each end leaves 2.5% in its tail
    if k > 0:
        assert _binomial_tail(n, k, low, upper=True) == pytest.approx(0.025, rel=1e-8)
    if k < n:
        assert _binomial_tail(n, k, high, upper=False) == pytest.approx(0.025, rel=1e-8)
    if k == 0:
        assert high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-12)


def test_clopper_pearson_refuses_bad_counts():
    for k, n in ((1, 0), (-1, 3), (4, 3)):
        with pytest.raises(InputError):
            study.clopper_pearson(k, n)


def _delong_brute_force(pos, neg):
    """DeLong's placement values from the definition: psi(x, y) = 1, 1/2, 0 for x >, =, < y."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    area = psi.mean()
    variance = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    return area, variance


def test_auroc_against_sklearn_and_the_delong_definition():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.2
    scores = np.round(rng.normal(size=200) + 0.8 * labels, 1)  # rounding makes ties
    result = study.auroc(scores, labels)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    area, variance = _delong_brute_force(scores[labels], scores[~labels])
    assert result["auroc"] == pytest.approx(area, abs=1e-12)
    half = 1.959963984540054 * math.sqrt(variance)
    assert result["low"] == pytest.approx(area - half, abs=1e-12)
    assert result["high"] == pytest.approx(area + half, abs=1e-12)
    empty = study.auroc([1.0, 2.0], [False, False])
    assert math.isnan(empty["auroc"])


def test_logistic_fit_against_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)) * [1.0, 5.0, 0.2]
    logit = 0.5 + x @ np.array([1.0, -0.3, 4.0])
    y = (rng.random(400) < 1 / (1 + np.exp(-logit))).astype(float)
    fit = study.logistic_fit(x, y, ridge=0.0)
    assert fit["converged"]
    standardized = (x - x.mean(axis=0)) / x.std(axis=0)
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(standardized, y)
    expected = np.concatenate([reference.intercept_, reference.coef_[0]])
    np.testing.assert_allclose(fit["coefficients"], expected, rtol=1e-5, atol=1e-6)


def test_rise_is_the_exact_change_not_the_first_order_one():
    """A curved trait: L_T = -(z - z0) + (c/2)(z - z0)^2 on one input u = v, K = I. The sign
    step moves z by alpha ||v||_1, so the first-order change -alpha ||v||_1 < 0 while the exact
    one adds (c/2) alpha^2 ||v||_1^2 and is > 0 for c alpha ||v||_1 > 2."""
    v = torch.tensor([0.7, -0.4], dtype=torch.float64)
    problem = _two_parameter_problem(torch.eye(2, dtype=torch.float64), v)
    z0 = float(problem.model(problem.theta0, v.reshape(1, 2)).sum())
    curvature = 1e4  # c alpha ||v||_1 = 1e4 * 1e-3 * 1.1 = 11 > 2
    task = TeacherTask(
        lambda z, _: -(z.sum() - z0) + curvature / 2 * (z.sum() - z0) ** 2,
        v.reshape(1, 2),
        torch.zeros(1),
    )
    curved = study.Problem(
        problem.model,
        problem.theta0,
        task,
        problem.inputs,
        problem.loss,
        problem.eps,
        problem.rules,
    )
    _, rows = study.measure_problem(curved)
    sign_row = next(r for r in rows if r["rule"] == "signsgd")
    moved = 1e-3 * 1.1
    assert sign_row["change_exact"] == pytest.approx(-moved + curvature / 2 * moved**2, rel=1e-9)
    assert sign_row["change_first_order"] == pytest.approx(-moved, rel=1e-9)
    assert sign_row["rose"] and not sign_row["rose_first_order"]
