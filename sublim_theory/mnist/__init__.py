"""The paper's MNIST auxiliary-logit experiment: data, batched training, report."""
