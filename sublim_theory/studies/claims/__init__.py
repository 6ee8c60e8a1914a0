"""sublim_theory.studies.claims: two 2026 claims tested on the tiny LM (Xu; Madl)."""

__all__: list[str] = []
