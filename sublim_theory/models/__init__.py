"""sublim_theory.models."""

__all__: list[str] = []
