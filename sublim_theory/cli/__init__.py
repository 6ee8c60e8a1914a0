"""CLI subcommands; see ``sublim_theory.cli.main``."""

__all__: list[str] = []  # the modules are the public surface
