# `make demo` and `make test` create .venv when missing and install the pinned CPU dependencies first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.plad-installed

.PHONY: demo test lint install clean bench bench-methods

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs whenever the pins or the project metadata change.
$(STAMP): $(BIN)/python requirements-cpu.txt pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-cpu.txt
	$(BIN)/python -m pip install --quiet -c requirements-cpu.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/plad demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/demo_seeds.py

# Every method, same budget, 3 seeds (about an hour on 2 CPU cores); results copied next to the other benchmarks.
bench-methods: $(STAMP)
	$(BIN)/plad bench --output_dir runs/bench
	cp runs/bench/bench.md runs/bench/bench.json benchmarks/results/

clean:
	rm -rf runs .pytest_cache
