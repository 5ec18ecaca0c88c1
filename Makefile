# `make demo` and `make test` create .venv when missing and install the pinned CPU dependencies first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.plad-installed

.PHONY: demo test test-servers lint install clean bench bench-methods bench-api

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

# The API tests again, plus those against llama.cpp's server (builds llama-cpp-python: 10-17 min the first time).
test-servers: $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-servers.txt
	$(BIN)/python -m pytest -q tests/test_api.py tests/test_api_unit.py tests/test_llamacpp.py

# rows/s vs concurrency through llama.cpp's server (needs `make test-servers` first)
bench-api: $(STAMP)
	$(BIN)/python benchmarks/api_throughput.py --server llamacpp
	$(BIN)/python benchmarks/api_throughput.py --server llamacpp --preset teacher --max_new_tokens 64 --prompts 96

bench: $(STAMP)
	$(BIN)/python benchmarks/demo_seeds.py

# Every method, same budget, 3 seeds (about an hour on 2 CPU cores); results copied next to the other benchmarks.
bench-methods: $(STAMP)
	$(BIN)/plad bench --output_dir runs/bench
	cp runs/bench/bench.md runs/bench/bench.json benchmarks/results/

clean:
	rm -rf runs .pytest_cache
