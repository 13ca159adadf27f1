"""Generation with ``transformers.generate``: for machines without vLLM, and as a reference."""

from __future__ import annotations

import torch

from rollout_workers.types import ProbeBatch, RolloutBatch, Sampling, TurnOutput, sample_seed


class HFEngine:
    def __init__(
        self,
        model_path: str,
        *,
        seed: int,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        torch_threads: int = 0,
        **_,
    ):
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu" and torch_threads > 0:
            torch.set_num_threads(torch_threads)
        torch_dtype = torch.bfloat16 if (dtype == "bfloat16" or (dtype == "auto" and self.device.type == "cuda")) else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.eos_ids = self._eos_ids()
        self.pad_id = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else self.eos_ids[0]
        self.seed = seed
        self.version = 0
        self._pending: list[tuple] = []

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.model.config.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: Sampling,
        step: int,
        base_seed: int,
        offset: int = 0,
        probe: ProbeBatch | None = None,
    ) -> RolloutBatch:
        batch = RolloutBatch(policy_version=self.version)
        if probe is not None:
            batch.probe_scores = [self.score(probe.prompt_ids, probe.response_ids)]
        for i, ids in enumerate(prompt_ids):
            for tokens, reason in self._sample(ids, sampling, sample_seed(base_seed, step, offset + i)):
                batch.prompt_ids.append(list(ids))
                batch.response_ids.append(tokens)
                batch.finish_reasons.append(reason)
                batch.prompt_index.append(i)
        batch.response_logprobs = self._logprobs(batch.prompt_ids, batch.response_ids, self._temperature(sampling))
        return batch

    @staticmethod
    def _temperature(sampling: Sampling) -> float:
        return sampling.temperature if sampling.temperature != 0 else 1.0

    def _sample(self, ids: list[int], sampling: Sampling, seed: int,
                prefix_allowed_tokens_fn=None) -> list[tuple[list[int], str]]:
        """``sampling.n`` completions of one prompt, seeded; ``prefix_allowed_tokens_fn``
        (transformers' hook) restricts each next token, as a constrained judge needs."""
        torch.manual_seed(seed)
        input_ids = torch.tensor([ids], device=self.device)
        kwargs = dict(do_sample=False) if sampling.temperature == 0 else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
        )
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            pad_token_id=self.pad_id,
            eos_token_id=None if sampling.ignore_eos else self.eos_ids,
            min_new_tokens=sampling.max_tokens if sampling.ignore_eos else 0,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
            **kwargs,
        )
        return [self._trim(row, sampling) for row in out[:, len(ids) :].tolist()]

    # ------------------------------------------------- request level (multi-turn rollouts)
    # No continuous batching here: each step generates the oldest pending request alone, so
    # conversations still advance independently, one turn per step.
    def add_turn(self, key: str, prompt_ids: list[int], sampling: Sampling, seed: int) -> None:
        self._pending.append((key, list(prompt_ids), sampling, seed))

    def add_probe(self, key: str, prompt_ids: list[int], response_ids: list[int]) -> None:
        self._pending.append((key, list(prompt_ids), list(response_ids), None))

    @torch.no_grad()
    def step_turns(self) -> list[TurnOutput]:
        key, ids, what, seed = self._pending.pop(0)
        if seed is None:  # a probe sequence: teacher-forced scores
            return [TurnOutput(key, [], self._logprobs([ids], [what], 1.0)[0], "probe")]
        ((tokens, reason),) = self._sample(ids, what, seed)
        logprobs = self._logprobs([ids], [tokens], self._temperature(what))[0]
        return [TurnOutput(key, tokens, logprobs, reason)]

    def has_turns(self) -> bool:
        return bool(self._pending)

    def abort_turns(self, keys: list[str]) -> None:
        drop = set(keys)
        self._pending = [p for p in self._pending if p[0] not in drop]

    def _trim(self, row: list[int], sampling: Sampling) -> tuple[list[int], str]:
        if not sampling.ignore_eos:
            for j, tok in enumerate(row):
                if tok in self.eos_ids:
                    return row[: j + 1], "stop"
        return row[: sampling.max_tokens], "length"

    @torch.no_grad()
    def _logprobs(self, prompts: list[list[int]], responses: list[list[int]], temperature: float) -> list[list[float]]:
        scores = []
        for p, r in zip(prompts, responses):
            if not r:
                scores.append([])
                continue
            ids = torch.tensor([p + r], device=self.device)
            logits = self.model(input_ids=ids).logits[0, len(p) - 1 : len(p) + len(r) - 1].float()
            logprobs = torch.log_softmax(logits / temperature, -1)
            scores.append(logprobs.gather(-1, torch.tensor(r, device=self.device)[:, None])[:, 0].tolist())
        return scores

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        return self._logprobs(prompt_ids, response_ids, 1.0)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict, strict=False)
        self.version = version

    def shutdown(self) -> None:
        del self.model
