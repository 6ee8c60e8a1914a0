"""CLI subcommands; see ``sublim_theory.cli``."""

__all__: list[str] = []  # the modules are the public surface
