"""What flows out of the generation engines."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sampling:
    """Sampling settings of one ``generate`` call."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    ignore_eos: bool = False
    """Force ``max_tokens`` tokens per completion (benchmarks compare equal work)."""


@dataclass
class RolloutBatch:
    """Completions of a list of prompts; samples of one prompt are consecutive.

    ``response_logprobs`` are the engine's per-token logprobs of the sampled tokens at the
    sampling temperature, one per generated token (prompt excluded).
    """

    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    response_logprobs: list[list[float]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_index: list[int] = field(default_factory=list)
    policy_version: int = 0
    probe_scores: list[list[list[float]]] = field(default_factory=list)
    """Weight-sync probe logprobs, one entry per engine that scored the probe in this call
    (teacher-forced, no temperature; see :mod:`pipeline.sync`)."""

    def __len__(self) -> int:
        return len(self.response_ids)

    def extend(self, other: "RolloutBatch", index_offset: int) -> None:
        self.prompt_ids += other.prompt_ids
        self.response_ids += other.response_ids
        self.response_logprobs += other.response_logprobs
        self.finish_reasons += other.finish_reasons
        self.prompt_index += [i + index_offset for i in other.prompt_index]
        self.probe_scores += other.probe_scores


@dataclass
class ProbeBatch:
    """Fixed sequences an engine scores teacher-forced to prove which weights it runs."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]


def sample_seed(base_seed: int, step: int, prompt_position: int) -> int:
    """Per-prompt sampling seed, independent of how prompts are split among engines."""
    return (base_seed * 1_000_003 + step * 10_007 + prompt_position) % (2**31 - 1)
