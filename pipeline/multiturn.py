"""The driver's side of multi-turn runs (``env.class`` set): what the generate, reward and
evaluation phases do differently when every sample is a conversation.

Everything that can fail on the environment or the chat template fails in
:class:`MultiTurn`'s constructor, before Ray starts: the environment is imported and given a
trial ``reset`` / ``step`` (:func:`pipeline.envs.base.load_env`), the template is checked to
grow a conversation token by token (:class:`rollout_workers.turn_tokens.TurnTokens`), and the
trial opening must fit ``data.max_prompt_tokens``.

Rewards: each assistant turn has the environment's turn reward, and each conversation its
conversation reward (``info["conversation_reward"]``); with ``reward.sources`` configured,
their weighted sum on the final reply is added to the conversation reward. A conversation is
unscorable (NaN, left out of the update) when the environment failed on it or a source with a
weight other than 0 could not score its final reply. Logged: ``reward/mean`` (the mean return:
turn rewards plus conversation reward), ``reward/turn_mean``, ``reward/conversation_mean``,
``env/turns_mean``, ``env/unscorable``, ``env/truncated``, ``env/<metric>`` for each number the
environment reports in ``info["metrics"]`` (``env/success``), and each source's
``reward/<name>/*``.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from pipeline.envs.base import load_env
from rollout_workers.multiturn import Limits
from rollout_workers.turn_tokens import TurnTokens
from rollout_workers.types import ProbeBatch, RolloutBatch, Sampling

_INFO_KEYS = ("turns", "truncated", "unscorable", "error", "assistant_tokens")


def multiturn_errors(cfg) -> list[str]:
    """Rules across sections for multi-turn runs (``pipeline.config_checks._validate``)."""
    if not cfg.env.class_path:
        return []
    errors = []
    if cfg.reward.function != "builtin":
        errors.append(
            f"reward.function={cfg.reward.function!r} does not apply with env.class set: the environment "
            "gives the rewards; add the function to reward.sources to score each final reply as well"
        )
    return errors


class MultiTurn:
    """The environment factory, turn tokens and limits of a multi-turn run."""

    def __init__(self, cfg, tokenizer, train_rows: list):
        self.cfg = cfg
        if not train_rows:
            raise ValueError("env.class: a multi-turn run needs training rows to open conversations")
        self.factory = load_env(cfg.env)
        opening = self.factory.check(train_rows[0])  # trial reset (and step, unless turned off)
        self.tokens = TurnTokens(tokenizer, cfg.model.path)
        self.limits = Limits.from_config(cfg)
        length = len(self.tokens.opening(opening))
        if length > cfg.data.max_prompt_tokens:
            raise ValueError(
                f"env.class={self.factory.name}: the opening of {train_rows[0].source} has {length} tokens, "
                f"more than data.max_prompt_tokens={cfg.data.max_prompt_tokens}"
            )

    def start(self, placement=None) -> None:
        """The environment's shared services (an LLM user's engine), in the run's placement."""
        self.factory.start(placement)

    def submit(self, rollouts, rows: list, sampling: Sampling, step: int, probe: Optional[ProbeBatch]):
        return rollouts.submit_conversations(rows, sampling, step, self.factory, self.limits, probe)

    def eval_sampling(self) -> Sampling:
        return Sampling(n=1, temperature=0.0, max_tokens=self.cfg.env.max_tokens_per_turn)

    # ------------------------------------------------------------------ rewards
    def score_request(self, rollout: RolloutBatch, rows: list):
        """The final reply of every conversation, as reward sources see a completion: the
        messages before it and its text."""
        from pipeline.rewards import ScoreRequest

        sample_rows = [rows[i] for i in rollout.prompt_index]
        before, finals = [], []
        for conversation in rollout.conversations:
            last = max((i for i, m in enumerate(conversation) if m["role"] == "assistant"), default=None)
            before.append(conversation[:last] if last is not None else conversation)
            finals.append(conversation[last]["content"] if last is not None else "")
        return ScoreRequest(
            messages=before,
            completions=finals,
            references=[r.references for r in sample_rows],
            answers=[r.answer for r in sample_rows],
            metadata=[r.metadata for r in sample_rows],
        )

    def collect(self, rollout: RolloutBatch, reward_set=None, pending=None) -> tuple[np.ndarray, dict[str, float]]:
        """Per-conversation scores for the advantage phase (the conversation-level reward; the
        turn rewards travel in the batch) and the step's reward and ``env/*`` metrics."""
        scores = np.asarray(rollout.conversation_rewards, dtype=np.float64)
        metrics: dict[str, float] = {}
        if reward_set is not None and pending is not None:
            extra, source_metrics = reward_set.collect(pending)
            scores = scores + extra  # NaN where a counted source could not score the final reply
            metrics.update({k: v for k, v in source_metrics.items() if k.count("/") > 1})
        turn_sums = np.array([sum(r) for r in rollout.turn_rewards], dtype=np.float64)
        returns = turn_sums + scores
        finite = np.isfinite(returns)
        turns = [r for r, ok in zip(rollout.turn_rewards, finite) if ok]
        metrics.update({
            "reward/mean": float(returns[finite].mean()) if finite.any() else math.nan,
            "reward/std": float(returns[finite].std()) if finite.any() else math.nan,
            "reward/unscorable": float((~finite).sum()),
            "reward/turn_mean": float(np.mean([x for r in turns for x in r])) if any(turns) else math.nan,
            "reward/conversation_mean": float(scores[finite].mean()) if finite.any() else math.nan,
        })
        metrics.update(conversation_metrics(rollout, "env"))
        metrics["response/length_mean"] = float(np.mean([len(r) for r in rollout.response_ids]))
        metrics["response/truncated_frac"] = float(np.mean([r == "length" for r in rollout.finish_reasons]))
        return scores, metrics

    def problems(self, rollout: RolloutBatch) -> list[str]:
        """The environment's line when no conversation could be scored: how many it failed
        on, and the first error it reported."""
        failed = [info for info in rollout.env_infos if info["unscorable"]]
        if not failed:
            return []
        first = next((info["error"] for info in failed if info.get("error")), None)
        return [f"environment {self.factory.name}: {len(failed)} unscorable conversations; "
                f"first: {first or 'not reported'}"]

    def eval_metrics(self, rollout: RolloutBatch) -> dict[str, float]:
        """Held-out conversations: ``eval/success`` (and every other ``info["metrics"]`` number,
        e.g. ``eval/success/distance_2``), ``eval/return``, ``eval/turns_mean``, ``eval/unscorable``."""
        metrics = conversation_metrics(rollout, "eval")
        returns = np.array([sum(t) + c for t, c in zip(rollout.turn_rewards, rollout.conversation_rewards)])
        finite = returns[np.isfinite(returns)]
        metrics["eval/return"] = float(finite.mean()) if finite.size else math.nan
        return metrics

    def shutdown(self) -> None:
        self.factory.shutdown()


def conversation_metrics(rollout: RolloutBatch, prefix: str) -> dict[str, float]:
    """``<prefix>/turns_mean``, ``/unscorable`` and ``/truncated`` (counts), ``/assistant_tokens_mean``
    and the mean of each number environments report (over the conversations reporting it)."""
    infos = rollout.env_infos
    out = {
        f"{prefix}/turns_mean": float(np.mean([i["turns"] for i in infos])) if infos else math.nan,
        f"{prefix}/unscorable": float(sum(bool(i["unscorable"]) for i in infos)),
        f"{prefix}/truncated": float(sum(bool(i["truncated"]) for i in infos)),
        f"{prefix}/assistant_tokens_mean": float(np.mean([i["assistant_tokens"] for i in infos])) if infos else math.nan,
    }
    sums: dict[str, list[float]] = {}
    for info in infos:
        for key, value in info.items():
            if key not in _INFO_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                sums.setdefault(key, []).append(float(value))
    out.update({f"{prefix}/{key}": float(np.mean(values)) for key, values in sums.items()})
    return out
