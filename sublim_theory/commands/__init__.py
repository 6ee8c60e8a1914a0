"""CLI subcommands; see ``sublim_theory.cli``."""
