"""sublim_theory.engine."""

__all__: list[str] = []
