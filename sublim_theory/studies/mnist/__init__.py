"""sublim_theory.studies.mnist."""

__all__: list[str] = []
