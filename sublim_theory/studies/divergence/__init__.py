"""sublim_theory.studies.divergence."""

__all__: list[str] = []
