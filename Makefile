PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench notebooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/handrail demo --db handrail-demo.db

test: $(STAMP)
	$(BIN)/ruff check handrail tests benchmarks examples notebooks/execute.py
	$(BIN)/mypy
	$(BIN)/python -m pytest

notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

bench: $(STAMP)
	$(BIN)/python benchmarks/gate_overhead.py
	$(BIN)/python benchmarks/inbox.py
	$(BIN)/python benchmarks/audit.py

clean:
	rm -rf $(VENV) handrail-demo.db*
