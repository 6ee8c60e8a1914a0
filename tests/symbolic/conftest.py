import pytest

from sublim_theory.symbolic import build_all


@pytest.fixture(scope="session")
def derivations():
    """Every derivation, built (and so checked) once per test session."""
    return build_all()
