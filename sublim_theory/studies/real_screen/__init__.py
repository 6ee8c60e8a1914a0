"""The subliminal screen on the real model: the real number experiment's data sets."""

__all__: list[str] = []
