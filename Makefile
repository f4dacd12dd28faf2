# Two entry points for a fresh machine: `make test` and `make train`.
# Each creates .venv (once), installs torch and pyppo into it, then runs.
#   make test TORCH=torch==2.14.1 PYPPO_CUDA=ON   # a CUDA build instead of the CPU one
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PYPPO_CUDA ?= AUTO
export PYPPO_CUDA

BIN := $(VENV)/bin
STAMP := $(VENV)/.pyppo-installed

.PHONY: setup test train bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml CMakeLists.txt $(wildcard csrc/*.* csrc/*/*.*)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" numpy pandas tqdm matplotlib scikit-build-core "cmake>=3.27" ninja \
		pytest hypothesis gymnasium pyarrow
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_kernels.py

lint: setup
	$(BIN)/pip install -q ruff && $(BIN)/ruff check .

clean:
	rm -rf build $(VENV)
