"""Episodes: what the generate, reward and evaluation phases do with one batch, behind one
interface, so the RL loop (:mod:`pipeline.stages.train`) has no mode branches.

:class:`SingleTurn`: a prompt, a reply; the reward sources (or the task's rule) score each reply,
and evaluation reports ``eval/accuracy`` (the accuracy rule) and ``eval/reward/*``.

:class:`MultiTurn` (``env.class`` set): every sample is a conversation. Everything that can fail
on the environment or the chat template fails in its constructor, before Ray starts: the
environment is imported and given a trial ``reset`` / ``step``
(:func:`pipeline.envs.base.load_env`), the template is checked to grow a conversation token by
token (:class:`rollout_workers.turn_tokens.TurnTokens`), and the trial opening must fit
``data.max_prompt_tokens``.

Multi-turn rewards: each assistant turn has the environment's turn reward, and each conversation
its conversation reward (``info["conversation_reward"]``); with ``reward.sources`` configured,
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
from typing import Optional, Protocol

import numpy as np

from pipeline.data.templates import check_chat_template
from pipeline.envs.base import TRIAL_REPLY, load_env
from pipeline.rewards import RewardSet, ScoreRequest, eval_reward_fn, score_completions
from rollout_workers.conversation_loop import Limits
from rollout_workers.turn_tokens import TurnTokens
from rollout_workers.types import ProbeBatch, RolloutBatch, Sampling
from rollout_workers.user_model import start_user_server, stop_user_servers

_INFO_KEYS = ("turns", "truncated", "unscorable", "error", "assistant_tokens")


class Episodes(Protocol):
    """What the loop asks of a batch's episodes, whatever their kind."""

    headline_name: str
    """What :meth:`headline` measures, as the run's summary names it."""

    def start(self, placement=None) -> None: ...

    def submit(self, rollouts, prompt_ids: list[list[int]], rows: list, sampling: Sampling, step: int,
               probe: Optional[ProbeBatch]): ...

    def score_request(self, rollout: RolloutBatch, rows: list) -> ScoreRequest: ...

    def collect(self, rollout: RolloutBatch, reward_set: Optional[RewardSet], pending) -> tuple[np.ndarray, dict[str, float]]: ...

    def problems(self, rollout: RolloutBatch) -> list[str]: ...

    def eval_sampling(self) -> Sampling: ...

    def eval_metrics(self, rollout: RolloutBatch, rows: list, reward_set: Optional[RewardSet]) -> dict[str, float]: ...

    def headline(self, metrics: dict[str, float]) -> float: ...

    def shutdown(self) -> None: ...


def build(cfg, tokenizer, train_rows: list) -> Episodes:
    """The run's episodes: conversations when ``env.class`` is set, else single replies."""
    if cfg.env.class_path is not None:
        return MultiTurn(cfg, tokenizer, train_rows)
    return SingleTurn(cfg, tokenizer)


def reward_set(cfg, tokenizer) -> Optional[RewardSet]:
    """The run's reward sources; a multi-turn run's rewards come from its environment, plus
    ``reward.sources`` on each final reply when there are any. Every source is checked here
    (imports, model paths, templates, tokens); its actors start with the run."""
    if cfg.reward.sources or cfg.env.class_path is None:
        return RewardSet.from_config(cfg, tokenizer)
    return None


class SingleTurn:
    """One prompt, one reply: the reward sources score each reply."""

    def __init__(self, cfg, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.eval_fn = eval_reward_fn(cfg.reward, cfg.data.task)
        self.headline_name = "eval accuracy" if self.eval_fn is not None else "eval reward"

    def start(self, placement=None) -> None:
        pass

    def submit(self, rollouts, prompt_ids: list[list[int]], rows: list, sampling: Sampling, step: int,
               probe: Optional[ProbeBatch]):
        return rollouts.submit(prompt_ids, sampling, step, probe=probe)

    def score_request(self, rollout: RolloutBatch, rows: list) -> ScoreRequest:
        """The batch's samples as reward sources see them (the row of each sample's prompt)."""
        sample_rows = [rows[i] for i in rollout.prompt_index]
        return ScoreRequest(
            messages=[r.messages for r in sample_rows],
            completions=self.tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True),
            references=[r.references for r in sample_rows],
            answers=[r.answer for r in sample_rows],
            metadata=[r.metadata for r in sample_rows],
        )

    def collect(self, rollout: RolloutBatch, reward_set: Optional[RewardSet], pending) -> tuple[np.ndarray, dict[str, float]]:
        scores, metrics = reward_set.collect(pending)
        lengths = [len(r) for r in rollout.response_ids]
        metrics["response/length_mean"] = float(np.mean(lengths))
        metrics["response/truncated_frac"] = float(np.mean([r == "length" for r in rollout.finish_reasons]))
        return scores, metrics

    def problems(self, rollout: RolloutBatch) -> list[str]:
        return []

    def eval_sampling(self) -> Sampling:
        return Sampling(n=1, temperature=0.0, max_tokens=self.cfg.rollout.max_tokens)

    def eval_metrics(self, rollout: RolloutBatch, rows: list, reward_set: Optional[RewardSet]) -> dict[str, float]:
        """Greedy replies to the held-out prompts: ``eval/accuracy`` (mean score of the accuracy
        rule, when there is one) and, with ``reward.sources``, ``eval/reward/mean`` and each
        source's ``eval/reward/<name>/mean``."""
        metrics: dict[str, float] = {}
        request = self.score_request(rollout, rows)
        if self.eval_fn is not None:
            scores, _ = score_completions(self.eval_fn, request.prompts, request.completions, request.answers)
            finite = scores[np.isfinite(scores)]
            metrics["eval/accuracy"] = float(finite.mean()) if finite.size else float("nan")
        if self.cfg.reward.sources:
            _, reward_metrics = reward_set.score(request)
            metrics.update({f"eval/{k}": v for k, v in reward_metrics.items() if k.endswith("/mean")})
        return metrics

    def headline(self, metrics: dict[str, float]) -> float:
        """The evaluation figure of the summary: accuracy when there is an accuracy rule, else
        the held-out reward."""
        return metrics.get("eval/accuracy" if self.eval_fn is not None else "eval/reward/mean", float("nan"))

    def shutdown(self) -> None:
        pass


class MultiTurn:
    """Conversations: the environment factory, turn tokens and limits of a multi-turn run."""

    headline_name = "held-out success (env/success, else return)"

    def __init__(self, cfg, tokenizer, train_rows: list):
        self.cfg = cfg
        self._user_engine = False
        if not train_rows:
            raise ValueError("env.class: a multi-turn run needs training rows to open conversations")
        self.factory = load_env(cfg.env)
        opening = self.factory.check(train_rows[0])  # trial reset (and step, unless turned off)
        # The policy's template must render what the environment sends (Gemma-3's refuses a
        # system message anywhere but first): fail here, naming the model, not mid-rollout.
        trial = [opening]
        if self.factory.trial_message is not None:
            trial.append(opening + [{"role": "assistant", "content": TRIAL_REPLY}, self.factory.trial_message])
        check_chat_template(tokenizer, f"model.path={cfg.model.path!r} (env.class={self.factory.name})", tuple(trial))
        self.tokens = TurnTokens(tokenizer, cfg.model.path)
        self.limits = Limits.from_config(cfg)
        length = len(self.tokens.opening(opening))
        if length > cfg.data.max_prompt_tokens:
            raise ValueError(
                f"env.class={self.factory.name}: the opening of {train_rows[0].source} has {length} tokens, "
                f"more than data.max_prompt_tokens={cfg.data.max_prompt_tokens}"
            )

    def start(self, placement=None) -> None:
        """The environment's shared services, and an LLM user's engine, in the run's placement."""
        self.factory.start(placement)
        user_config = getattr(self.factory.cls, "user_config", None)
        if user_config is not None:
            start_user_server(user_config(self.factory.config), placement)
            self._user_engine = True

    def submit(self, rollouts, prompt_ids: list[list[int]], rows: list, sampling: Sampling, step: int,
               probe: Optional[ProbeBatch]):
        """A conversation opens on each of ``rows`` (the prompts' ids are the environment's to make)."""
        return rollouts.submit_conversations(rows, sampling, step, self.factory, self.limits, probe)

    def eval_sampling(self) -> Sampling:
        return Sampling(n=1, temperature=0.0, max_tokens=self.cfg.env.max_tokens_per_turn)

    # ------------------------------------------------------------------ rewards
    def score_request(self, rollout: RolloutBatch, rows: list):
        """The final reply of every conversation, as reward sources see a completion: the
        messages before it and its text."""
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

    def collect(self, rollout: RolloutBatch, reward_set: Optional[RewardSet] = None, pending=None) -> tuple[np.ndarray, dict[str, float]]:
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

    def eval_metrics(self, rollout: RolloutBatch, rows: list = (), reward_set: Optional[RewardSet] = None) -> dict[str, float]:
        """Held-out conversations: ``eval/success`` (and every other ``info["metrics"]`` number,
        e.g. ``eval/success/distance_2``), ``eval/return``, ``eval/turns_mean``, ``eval/unscorable``."""
        metrics = conversation_metrics(rollout, "eval")
        returns = np.array([sum(t) + c for t, c in zip(rollout.turn_rewards, rollout.conversation_rewards)])
        finite = returns[np.isfinite(returns)]
        metrics["eval/return"] = float(finite.mean()) if finite.size else math.nan
        return metrics

    def headline(self, metrics: dict[str, float]) -> float:
        return metrics.get("eval/success" if "eval/success" in metrics else "eval/return", float("nan"))

    def shutdown(self) -> None:
        self.factory.shutdown()
        if self._user_engine:
            stop_user_servers()
            self._user_engine = False


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
