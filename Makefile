# Two entry points for a fresh machine: `make demo` and `make test`. Both create (or reuse)
# the virtual environment .venv and install requirements.txt into it, with the test extras
# (requirements-dev.txt) and the Ray extra (requirements-ray.txt, for the Ray executor tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two pytest workers (pytest-xdist), one test file per worker at a time (--dist loadfile keeps a file's
# module fixtures, e.g. the shared Ray cluster, in one process): the suite is mostly single-threaded Python
# (imports, tracing, subprocess start-up), so 2 workers on CI's 2 cores cut its wall time (see README).
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
XDIST := $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile,)

.PHONY: venv test test-all demo lint bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-ray.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-ray.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# TF_CPP_MIN_LOG_LEVEL is deliberately not set here: setting it turns off the entry points' own filter of
# TensorFlow's start-up lines (lps_keras/cli.py), which the variable cannot silence. tests/conftest.py sets
# it for the test process itself; the CLI tests unset it for the processes they start.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest --runslow $(XDIST) $(PYTEST_ARGS)

demo: $(STAMP)
	bash scripts/demo.sh

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/data_pipeline.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/train_step.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/latency.py

clean:
	rm -rf $(VENV) runs savedmodels/demo*
