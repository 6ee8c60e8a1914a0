"""sublim_theory.studies.bench."""

__all__: list[str] = []
