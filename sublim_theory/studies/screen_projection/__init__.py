"""sublim_theory.studies.screen_projection: exact vs projected attributions (issue 22 item 4)."""

__all__: list[str] = []
