"""Every derivation of theory/alignment.md builds (so every step checks); wrong claims raise."""

import pytest
import sympy as sp

from sublim_theory.symbolic import DERIVATIONS, CheckKind, DerivationStepError
from sublim_theory.symbolic.general import generic_jets, lemma
from sublim_theory.symbolic.network import concrete_network
from sublim_theory.symbolic.steps import Derivation

EXPECTED_KEYS = [
    "lemma",
    "squared_error",
    "soft_cross_entropy",
    "kl",
    "subset",
    "corollary",
    "second_order",
    "init_distance",
    "concrete_network",
]


def test_every_derivation_builds_with_checked_steps(derivations):
    assert [d.key for d in derivations] == EXPECTED_KEYS
    for derivation in derivations:
        checked = [s for s in derivation.steps if s.checked]
        assert checked, derivation.key
        assert all(s.kind is not CheckKind.ASSUMPTION for s in checked)
        assert all(s.kind is CheckKind.ASSUMPTION for s in derivation.assumptions)


def test_key_claims_are_present(derivations):
    labels = {(d.key, s.label) for d in derivations for s in d.steps}
    for claim in [
        ("lemma", "cross-derivative"),
        ("lemma", "first-order"),
        ("lemma", "alignment"),
        ("soft_cross_entropy", "variance-identity"),
        ("kl", "hessian"),
        ("subset", "one-logit-hessian"),
        ("corollary", "loss-falls"),
        ("second_order", "second-order"),
        ("second_order", "critical-step"),
        ("init_distance", "base-pull"),
        ("init_distance", "cosine-law"),
        ("concrete_network", "softmax_ce-first-order"),
        ("concrete_network", "one-logit"),
    ]:
        assert claim in labels


def test_psd_is_an_explicit_assumption_in_the_general_lemma(derivations):
    lemma_derivation = derivations[0]
    assert "psd" in [s.label for s in lemma_derivation.assumptions]


def test_a_wrong_first_order_claim_raises():
    jets = generic_jets()
    derivation = Derivation(key="wrong", title="t", statement="s", setting="s")
    update = jets.student_update(sp.zeros(3, 1))
    with pytest.raises(DerivationStepError, match="step 'doubled'"):
        # the true coefficient is J^T M J v, not twice it
        derivation.series(
            "doubled", update, jets.eps, 1, 2 * jets.gauss_newton() * jets.v, ("a", "b"), "x"
        )


def test_a_sign_error_in_the_cross_derivative_raises():
    jets = generic_jets()
    derivation = Derivation(key="wrong", title="t", statement="s", setting="s")
    hessian = jets.output_hessian()
    with pytest.raises(DerivationStepError, match="sign"):
        derivation.identity("sign", hessian, -hessian, ("M", "-M"), "wrong unless M = 0")


def test_builders_are_listed_once():
    assert len(set(DERIVATIONS)) == len(DERIVATIONS)
    assert lemma in DERIVATIONS


@pytest.mark.slow
def test_concrete_softmax_second_order_by_full_expansion():
    derivation = concrete_network(slow_steps=True)
    assert "softmax_ce-second-order" in [s.label for s in derivation.steps]
