import os

import pytest
import torch
from hypothesis import settings

# Hypothesis loads its built-in "ci" profile (derandomized, more examples) when CI is set.
# Locally, keep the default profile but without deadlines: torch's first calls are slow.
settings.register_profile("dev", deadline=None, max_examples=40)
if not os.environ.get("CI"):
    settings.load_profile("dev")

# Test models are tiny: one intra-op thread is fastest, and two thrash on a loaded machine.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
