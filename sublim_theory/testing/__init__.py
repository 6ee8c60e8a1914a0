"""sublim_theory.testing."""

__all__: list[str] = []
