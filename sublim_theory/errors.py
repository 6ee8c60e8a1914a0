"""The one exception type for bad user input: its message says what was wrong and what to do."""

__all__ = [
    "InputError",
]


class InputError(ValueError):
    """Bad input (shape, name, value, file). The CLI prints its message as one line and exits 2."""
