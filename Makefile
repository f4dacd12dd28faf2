# Two entry points for a fresh machine: `make train` and `make test`.
# Each creates .venv (once), installs torch and pyppo into it, then runs.
#   make train ARGS="--bad-ticks 0.01"              # extra options for train_rl_agent.py
#   make test TORCH=torch==2.14.1 PYPPO_CUDA=ON   # a CUDA build instead of the CPU one
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
RUFF   := ruff==0.17.6
PYPPO_CUDA ?= AUTO
export PYPPO_CUDA

BIN := $(VENV)/bin
STAMP := $(VENV)/.pyppo-installed

ARGS ?=

.PHONY: setup test train bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml CMakeLists.txt $(wildcard csrc/*.* csrc/*/*.* csrc/*/*/*.*)
	$(BIN)/pip install -q "$(TORCH)" numpy pandas tqdm matplotlib tomli-w safetensors \
		'tomli; python_version < "3.11"' scikit-build-core "cmake>=3.27" ninja \
		pytest hypothesis gymnasium pyarrow tensorboard empyrical-reloaded==0.7.1 \
		stable-baselines3==2.9.2
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

train: setup
	$(BIN)/python scripts/train_rl_agent.py --epochs 10 $(ARGS)

bench: setup
	$(BIN)/pip install -q stable-baselines3
	for b in kernels env training scale backtest predict; do \
		$(BIN)/python benchmarks/bench_$$b.py || exit 1; done

lint: setup
	$(BIN)/pip install -q "$(RUFF)"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf build $(VENV)
