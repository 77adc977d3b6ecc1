PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: demo test lint bench bench-agentdojo notebooks clean

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
	$(BIN)/python benchmarks/inbox_pages.py
	$(BIN)/python benchmarks/audit.py --scale

# AgentDojo pins packages below what langchain needs: it gets a venv of its own.
$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-agentdojo: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m pytest tests/test_agentdojo_bench.py -q
	$(BENCH_VENV)/bin/python benchmarks/agentdojo.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) handrail-demo.db*
