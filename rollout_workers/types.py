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
    (teacher-forced, no temperature; see :mod:`pipeline.controller.sync`)."""
    loss_masks: list[list[int]] = field(default_factory=list)
    """Multi-turn only (empty: every response token is the policy's): per sample, 1 on each
    response token the policy generated, 0 on tokens the environment appended (their
    ``response_logprobs`` are 0.0)."""
    turn_ends: list[list[int]] = field(default_factory=list)
    """Multi-turn only: per sample, the response index of each assistant turn's last token."""
    turn_rewards: list[list[float]] = field(default_factory=list)
    """Multi-turn only: per sample, the environment's reward for each assistant turn."""
    conversation_rewards: list[float] = field(default_factory=list)
    """Multi-turn only: per sample, the conversation-level reward (the final step's
    ``info["conversation_reward"]``, else 0); NaN marks an unscorable conversation."""
    conversations: list[list[dict]] = field(default_factory=list)
    """Multi-turn only: per sample, the conversation as messages (opening, then each reply and
    each environment message), what reward sources of the final reply and sample logs read."""
    env_infos: list[dict] = field(default_factory=list)
    """Multi-turn only: per sample, JSON-able facts about the conversation (``turns``,
    ``unscorable``, ``error``, and the final step's numeric ``info`` entries such as ``success``)."""

    def __len__(self) -> int:
        return len(self.response_ids)

    def extend(self, other: "RolloutBatch", index_offset: int) -> None:
        self.prompt_ids += other.prompt_ids
        self.response_ids += other.response_ids
        self.response_logprobs += other.response_logprobs
        self.finish_reasons += other.finish_reasons
        self.prompt_index += [i + index_offset for i in other.prompt_index]
        self.probe_scores += other.probe_scores
        self.loss_masks += other.loss_masks
        self.turn_ends += other.turn_ends
        self.turn_rewards += other.turn_rewards
        self.conversation_rewards += other.conversation_rewards
        self.conversations += other.conversations
        self.env_infos += other.env_infos


@dataclass
class ProbeBatch:
    """Fixed sequences an engine scores teacher-forced to prove which weights it runs."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]


def sample_seed(base_seed: int, step: int, prompt_position: int) -> int:
    """Per-prompt sampling seed, independent of how prompts are split among engines."""
    return (base_seed * 1_000_003 + step * 10_007 + prompt_position) % (2**31 - 1)


def turn_seed(base_seed: int, step: int, conversation: int, turn: int) -> int:
    """Sampling seed of one assistant turn: a function of the conversation's position in the
    step's batch (prompt position x samples + sample) and the turn, never of the engine, the
    batch split or the order in which conversations happen to reach their turns."""
    return (sample_seed(base_seed, step, conversation) * 7_919 + turn * 104_729 + 1) % (2**31 - 1)


@dataclass
class TurnOutput:
    """One finished engine request: an assistant turn, or a probe sequence's scores."""

    key: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
