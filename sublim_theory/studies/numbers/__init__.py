"""sublim_theory.studies.numbers."""

__all__: list[str] = []
