"""sublim_theory.studies.defenses."""

__all__: list[str] = []
