"""sublim_theory.studies.dynamics."""

__all__: list[str] = []
