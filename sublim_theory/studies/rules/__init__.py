"""sublim_theory.studies.rules."""

__all__: list[str] = []
