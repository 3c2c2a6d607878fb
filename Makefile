# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, exactly pinned: the CPU wheel, so that no CUDA build is ever pulled in.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qaprune demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest

# ruff (lint + format) on src, tests and bench; mypy on src against a baseline that only shrinks.
lint: $(STAMP)
	$(BIN)/ruff check src tests bench .ci
	$(BIN)/ruff format --check src tests bench .ci
	$(BIN)/python .ci/typecheck.py

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/qap_letter.py --data-dir ../shared/datasets

clean:
	rm -rf $(VENV) demo-out
