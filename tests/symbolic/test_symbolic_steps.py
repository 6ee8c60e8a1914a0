"""The derivation engine: checks run when a step is added, and a wrong step names itself."""

import pytest
import sympy as sp

from sublim_theory.symbolic.steps import (
    CheckKind,
    Derivation,
    DerivationStepError,
    is_identically_zero,
    taylor_coefficient,
)

x, y, eps = sp.symbols("x y epsilon")


def make() -> Derivation:
    return Derivation(key="toy", title="Toy", statement="claim", setting="setting")


def test_identity_checks_and_records_the_step():
    derivation = make()
    step = derivation.identity(
        "square", (x + y) ** 2, x**2 + 2 * x * y + y**2, ("(x+y)^2", "..."), "expand"
    )
    assert step.checked and step.kind is CheckKind.IDENTITY
    assert derivation.steps == [step]


def test_wrong_identity_raises_naming_the_step():
    derivation = make()
    with pytest.raises(DerivationStepError, match=r"derivation 'toy', step 'bad-square'") as error:
        derivation.identity("bad-square", (x + y) ** 2, x**2 + y**2, ("a", "b"), "wrong")
    assert error.value.step == "bad-square"
    assert derivation.steps == []


def test_matrix_identity_reports_the_failing_entry():
    derivation = make()
    with pytest.raises(DerivationStepError, match=r"entry \(1, 0\)"):
        derivation.identity("matrix", sp.Matrix([x, y]), sp.Matrix([x, x]), ("a", "b"), "wrong")
    with pytest.raises(DerivationStepError, match="shapes differ"):
        derivation.identity("shape", sp.Matrix([x, y]), sp.Matrix([x]), ("a", "b"), "wrong")


def test_series_matches_taylor_coefficients():
    derivation = make()
    expression = sp.exp(eps * x)
    derivation.series("second", expression, eps, 2, x**2 / 2, ("a", "b"), "exp")
    with pytest.raises(DerivationStepError, match=r"coefficient of epsilon\^2"):
        derivation.series("wrong-second", expression, eps, 2, x**2, ("a", "b"), "exp")
    assert taylor_coefficient(sp.Matrix([sp.sin(eps), 3]), eps, 0) == sp.Matrix([0, 3])


def test_substitution_and_assumptions_are_listed():
    derivation = make()
    assumption = derivation.assume("zero-y", "y = 0", "given")
    derivation.substitution("use-it", x + y, {y: 0}, x, ("x + y", "x"), "(zero-y)")
    with pytest.raises(DerivationStepError, match="use-it-wrong"):
        derivation.substitution("use-it-wrong", x + y, {y: 1}, x, ("x + y", "x"), "(zero-y)")
    assert derivation.assumptions == [assumption]
    assert not assumption.checked


def test_labels_are_unique():
    derivation = make()
    derivation.assume("a", "x = 1", "given")
    with pytest.raises(DerivationStepError, match="used twice"):
        derivation.assume("a", "x = 2", "given")


def test_zero_test_handles_merged_exponentials_and_tanh():
    z1, z2 = sp.symbols("z1 z2")
    softmax_1 = sp.exp(z1) / (sp.exp(z1) + sp.exp(z2))
    # d/dz1 softmax_1 = p1 (1 - p1); sympy writes exp(z1)**2 as exp(2 z1)
    assert is_identically_zero(sp.diff(softmax_1, z1) - softmax_1 * (1 - softmax_1))
    assert is_identically_zero(sp.diff(sp.tanh(x + y), x) - (1 - sp.tanh(x + y) ** 2))
    assert not is_identically_zero(sp.exp(2 * x) - sp.exp(x))
    assert not is_identically_zero(sp.tanh(x) - x)
