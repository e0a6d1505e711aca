# Two entry points, each setting up its own environment from scratch:
#   make demo   create .venv, install, fit on bundled sample data
#   make test   create .venv, install, lint, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,lite,timm]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/automl-tl demo demo-data

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_embed.py

clean:
	rm -rf $(VENV) demo-data runs .pytest_cache .ruff_cache
