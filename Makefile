# Two commands do everything on a fresh machine:
#   make demo   creates .venv, installs the project, runs the layer on generated images (writes outputs/demo/*.png)
#   make test   creates .venv, installs the project, runs the CPU test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m scripts.demo

test: setup
	$(PY) -m pytest -q -m "not gpu and not slow"

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m scripts.bench_allocators

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis
