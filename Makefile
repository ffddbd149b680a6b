# bgwlab: `make test` and `make lab` set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup system-deps test lab bench bench-quick bench-tail soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[notebooks,dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the test suite needs (e.g. Chromium for the browser check).
system-deps:
	bash scripts/system-deps.sh

test: setup system-deps
	$(PY) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) benchmarks/run.py

bench-quick: setup
	$(PY) benchmarks/run.py --quick

bench-tail: setup  # root only: the start tail under ftrace's scheduler events
	$(PY) benchmarks/tail_trace.py --rounds 300 --out data/bench

soak: setup
	BGWLAB_SOAK_SECONDS=$${BGWLAB_SOAK_SECONDS:-300} $(PY) -m pytest -m soak -p no:cacheprovider tests

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
