# The two set-up commands: `make demo` and `make test` (both create .venv and install first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) -m pyrovae train --out runs/demo --overwrite
	$(PY) -m pyrovae evaluate runs/demo --iwae-k 1000
	$(PY) -m pyrovae sample runs/demo --n 64 --seed 1

test: install
	$(VENV)/bin/ruff check pyrovae tests benchmarks
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf runs .pytest_cache
