"""sublim_theory.harness."""

__all__: list[str] = []
