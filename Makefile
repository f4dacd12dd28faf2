# Two entry points for a fresh machine: `make train` and `make test`.
# Each creates .venv (once), installs torch and pyppo into it, then runs.
#   make train ARGS="--bad-ticks 0.01"              # extra options for train_rl_agent.py
#   make test TORCH=torch==2.14.1 PYPPO_CUDA=ON   # a CUDA build instead of the CPU one
#   make test-fast                                # the tests not marked slow (the edit loop)
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PYPPO_CUDA ?= AUTO
export PYPPO_CUDA

BIN := $(VENV)/bin
STAMP := $(VENV)/.pyppo-installed

ARGS ?=

.PHONY: setup test test-fast train bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The torch pin first (a plain "pip install torch" would pull the CUDA build), then the build
# tools (the build runs without isolation, against that torch), then pyppo with its test
# extras (pyproject.toml lists every dependency once). New packages under pyppo/ need a
# reinstall for the editable import hook to see them.
$(STAMP): $(BIN)/python pyproject.toml CMakeLists.txt $(wildcard csrc/*.* csrc/*/*.* csrc/*/*/*.*) \
		$(wildcard pyppo/*/__init__.py)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q scikit-build-core "cmake>=3.27" ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)
	@echo "pyppo is installed in $(VENV): 'source $(VENV)/bin/activate' puts pyppo-train, -eval, -walkforward, -sweep, -predict and -export on your PATH"

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

train: setup
	$(BIN)/python scripts/train_rl_agent.py $(ARGS)

bench: setup
	for b in kernels env training scale backtest predict; do \
		$(BIN)/python benchmarks/bench_$$b.py || exit 1; done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf build $(VENV)
