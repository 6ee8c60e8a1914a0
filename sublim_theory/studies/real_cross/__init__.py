"""sublim_theory.studies.real_cross."""

__all__: list[str] = []
