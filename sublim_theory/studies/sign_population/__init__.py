"""sublim_theory.studies.sign_population."""

__all__: list[str] = []
