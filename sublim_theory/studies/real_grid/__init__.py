"""sublim_theory.studies.real_grid: optimizers and LoRA ranks on the real model (issue 21 item 5)."""

__all__: list[str] = []
