"""sublim_theory.studies."""

__all__: list[str] = []
