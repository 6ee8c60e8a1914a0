"""sublim_theory.testbeds."""

__all__: list[str] = []
