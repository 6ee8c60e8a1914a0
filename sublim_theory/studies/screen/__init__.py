"""sublim_theory.studies.screen."""

__all__: list[str] = []
