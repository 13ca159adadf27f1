"""A sequence-classification reward model scoring conversations; plain Python, Ray optional.

Each sample is rendered by the reward model's own tokenizer and chat template as
``messages + [{"role": "assistant", "content": completion}]`` (no generation prompt), exactly
as a preference pair's side is rendered for training, and the model's single logit is read at
the last token. With ``reward_stats.json`` beside the model (``{"mean": m, "std": s}``, written
by ``rayppo rm``) the score is ``(logit - m) / s``.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import torch

from pipeline.data import token_ids

STATS_FILE = "reward_stats.json"


def read_stats(model_path: str) -> Optional[tuple[float, float]]:
    """``(mean, std)`` from the model directory's stats file, or None when there is none."""
    path = os.path.join(model_path, STATS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
        mean, std = float(stats["mean"]), float(stats["std"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected {{'mean': number, 'std': number}} ({type(e).__name__}: {e})") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{path}: mean must be finite and std > 0, got mean={mean}, std={std}")
    return mean, std



class RewardModelScorer:
    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 16,
        max_length: int = 1024,
        normalize: Optional[bool] = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        torch_threads: int = 0,
        device: Optional[str] = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu" and torch_threads > 0:
            torch.set_num_threads(torch_threads)
        use_bf16 = dtype == "bfloat16" or (dtype == "auto" and self.device.type == "cuda")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=1, dtype=torch.bfloat16 if use_bf16 else torch.float32,
            trust_remote_code=trust_remote_code,
        ).to(self.device)
        self.model.eval()
        self.pad_id = self._pad_id()
        self.batch_size, self.max_length = batch_size, max_length
        stats = read_stats(model_path)
        if normalize and stats is None:
            raise ValueError(f"{model_path}: normalize is true but there is no {STATS_FILE}")
        self.stats = stats if normalize is not False else None

    def _pad_id(self) -> int:
        config = self.model.config
        pad = config.pad_token_id if config.pad_token_id is not None else self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError("reward model: the tokenizer has neither a pad nor an eos token")
        # The classification head reads the rightmost token that is not the pad token.
        config.pad_token_id = int(pad)
        return int(pad)

    def encode(self, messages: list[dict], completion: str) -> tuple[list[int], bool]:
        """Token ids of the conversation ending with the reply, and whether it was cut."""
        chat = list(messages) + [{"role": "assistant", "content": completion}]
        ids = token_ids(self.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False))
        if len(ids) > self.max_length:
            return ids[-self.max_length:], True
        return ids, False

    @torch.no_grad()
    def _forward(self, batch: list[list[int]]) -> list[float]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
        return logits[:, 0].float().cpu().tolist()

    def score(self, messages: list[list[dict]], completions: list[str]) -> dict:
        """``{"scores": [...], "truncated": k, "seconds": s}``: one score per sample."""
        start = time.perf_counter()
        encoded = [self.encode(m, c) for m, c in zip(messages, completions)]
        # A sequence that itself ends in the pad token would be read one token early when
        # padded; those are scored alone, unpadded, where the head reads the last position.
        alone = [i for i, (ids, _) in enumerate(encoded) if ids[-1] == self.pad_id]
        padded = [i for i in range(len(encoded)) if i not in set(alone)]
        scores = [0.0] * len(encoded)
        for lo in range(0, len(padded), self.batch_size):
            chunk = padded[lo : lo + self.batch_size]
            for i, value in zip(chunk, self._forward([encoded[i][0] for i in chunk])):
                scores[i] = value
        if alone:
            saved, self.model.config.pad_token_id = self.model.config.pad_token_id, None
            try:
                for i in alone:
                    scores[i] = self._forward([encoded[i][0]])[0]
            finally:
                self.model.config.pad_token_id = saved
        if self.stats is not None:
            mean, std = self.stats
            scores = [(s - mean) / std for s in scores]
        return {
            "scores": scores,
            "truncated": sum(cut for _, cut in encoded),
            "seconds": time.perf_counter() - start,
        }
