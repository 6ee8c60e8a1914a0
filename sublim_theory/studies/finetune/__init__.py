"""sublim_theory.studies.finetune."""

__all__: list[str] = []
