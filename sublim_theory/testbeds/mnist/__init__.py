"""The paper's MNIST auxiliary-logit experiment: data, batched training, report."""

__all__: list[str] = []  # the modules are the public surface
