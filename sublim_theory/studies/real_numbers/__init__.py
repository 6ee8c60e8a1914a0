"""sublim_theory.studies.real_numbers."""

__all__: list[str] = []
