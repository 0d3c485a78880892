# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test bench gpu-check lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The tests also run the Ray and SLURM launchers (tests/test_launchers.py).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,ray,slurm]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/purerl-train experiment=demo

# Two pytest workers: much of the suite is single-threaded XLA compilation, so two
# processes keep 2 cores busy. No preallocation, so workers can share one GPU.
# Most tests compile small programs and run them for milliseconds: XLA's optimisation level 0
# halves their compile time, and XLA:CPU's legacy (non-MLIR) fusion emitters halve it again;
# neither changes a result beyond float32 rounding. Tests marked `runtime_bound` train long enough
# that optimised kernels are worth their compile time: they compile their training program with
# their own options (tests/conftest.py: RUNTIME_BOUND_COMPILE) and start first.
TEST_WORKERS ?= 2
test: $(TEST_STAMP)
	XLA_FLAGS="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false $$XLA_FLAGS" \
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	for f in benchmarks/*.py; do [ $$f = benchmarks/gpu_check.py ] && continue; echo "== $$f"; $(PY) $$f || exit 1; done

# On a machine with a GPU (pip install -e '.[dev,gpu]' first): tests, attention and PPO
# throughput up to 16,384 seeds in about 8 minutes, one report in gpu_check/gpu_check.md.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check purerl experiments analysis tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
