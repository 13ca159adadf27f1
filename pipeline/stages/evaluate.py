"""``rayppo eval``: score one model, or two with ``--against OTHER``, on the held-out prompts.

Each model answers every held-out prompt greedily (its own tokenizer and chat template, the
rollout engine of the config); then every reward source scores the replies. Reported per
model: each source's mean (and the weighted total), accuracy when there is an accuracy rule,
corpus BLEU / chrF and mean ROUGE-1/2/L against the rows' references, and reply length. With two
models, a win rate of the first over the second by one source (``--by``; default the first
``judge`` or ``model`` source, else the weighted total) with a 95% Wilson interval, ties
counted half. A table goes to the screen, everything (per-prompt replies and scores too) to JSON.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from pipeline import data, tasks
from pipeline.config.rewards import JudgeSourceConfig, source_configs
from pipeline.infra.tracking import format_table
from pipeline.rewards import RewardSet, ScoreRequest, eval_reward_fn, score_completions
from pipeline.rewards.similarity import corpus_similarity
from rollout_workers.types import Sampling

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float, float]:
    """Rate and Wilson score interval of ``successes`` out of ``n`` (ties may count 0.5)."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class WinRate:
    by: str
    wins: float
    ties: float
    losses: float
    n: int
    rate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def win_rate(scores_a: np.ndarray, scores_b: Optional[np.ndarray], by: str) -> WinRate:
    """A's win rate over B. With ``scores_b`` the two are compared prompt by prompt (prompts
    either side could not score are left out); without it ``scores_a`` already is A's win
    share per prompt (a pairwise judge: 1 win, 0.5 tie, 0 loss)."""
    if scores_b is None:
        keep = scores_a[np.isfinite(scores_a)]
        wins, ties = float(np.sum(keep == 1.0)), float(np.sum((keep > 0) & (keep < 1)))
        successes, n = float(keep.sum()), int(keep.size)
    else:
        both = np.isfinite(scores_a) & np.isfinite(scores_b)
        a, b = scores_a[both], scores_b[both]
        wins, ties = float(np.sum(a > b)), float(np.sum(a == b))
        successes, n = wins + 0.5 * ties, int(both.sum())
    rate, low, high = wilson_interval(successes, n)
    return WinRate(by, wins, ties, float(n) - wins - ties, n, rate, low, high)


@dataclass
class Replies:
    """One model's greedy replies to the held-out prompts."""

    model: str
    completions: list[str]
    lengths: list[int]
    truncated: list[bool] = field(default_factory=list)


def generate_replies(cfg, model_path: str, rows: list) -> Replies:
    """Start the config's rollout engines on ``model_path``, answer ``rows`` greedily, stop them."""
    from transformers import AutoTokenizer

    from rollout_workers.group import RolloutGroup

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    prompt_ids = data.encode_prompts(tokenizer, rows, cfg.data.max_prompt_tokens)
    group = RolloutGroup(cfg, model_path)
    try:
        batch = group.generate(prompt_ids, Sampling(n=1, temperature=0.0, max_tokens=cfg.rollout.max_tokens), step=0)
    finally:
        group.shutdown()
    return Replies(
        model_path,
        tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True),
        [len(r) for r in batch.response_ids],
        [f == "length" for f in batch.finish_reasons],
    )


def _baseline_keys(cfg) -> list[str]:
    return sorted({s.baseline_key for s in source_configs(cfg.reward)
                   if isinstance(s, JudgeSourceConfig) and s.mode == "pairwise" and s.against == "baseline"})


def _request(rows: list, replies: Replies, other: Optional[Replies], baseline_keys: list[str]) -> ScoreRequest:
    metadata = []
    for i, row in enumerate(rows):
        extra = {key: other.completions[i] for key in baseline_keys} if other is not None else {}
        metadata.append({**row.metadata, **extra})
    return ScoreRequest(
        messages=[r.messages for r in rows],
        completions=list(replies.completions),
        references=[r.references for r in rows],
        answers=[r.answer for r in rows],
        metadata=metadata,
    )


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def model_metrics(reward_set: RewardSet, request: ScoreRequest, replies: Replies, accuracy_fn) -> tuple[dict, dict]:
    """(summary figures, per-sample scores by source) of one model's replies."""
    results = reward_set.collect_results(reward_set.submit(request))
    total = reward_set.total(results)
    per_source = {s.name: r.scores for s, r in zip(reward_set.sources, results)}
    summary = {"reward/mean": _finite_mean(total), "reward/unscorable": float(np.isnan(total).sum())}
    for name, scores in per_source.items():
        summary[f"{name}/mean"] = _finite_mean(scores)
        summary[f"{name}/unscorable"] = float(np.isnan(scores).sum())
    if accuracy_fn is not None:
        scores, _ = score_completions(accuracy_fn, request.prompts, request.completions, request.answers)
        summary["accuracy"] = _finite_mean(scores)
    summary.update({f"similarity/{k}": v for k, v in corpus_similarity(request.completions, request.references).items()})
    summary["length/mean_tokens"] = float(np.mean(replies.lengths)) if replies.lengths else float("nan")
    summary["length/mean_chars"] = float(np.mean([len(c) for c in replies.completions])) if replies.completions else float("nan")
    summary["length/truncated_frac"] = float(np.mean(replies.truncated)) if replies.truncated else float("nan")
    return summary, {"reward": total, **per_source}


def default_judge(reward_set: RewardSet) -> str:
    """The source a win rate is judged by when ``--by`` is not given."""
    for source in reward_set.sources:
        if source.kind in ("judge", "model"):
            return source.name
    return "reward"


def _is_pairwise_baseline(reward_set: RewardSet, name: str) -> bool:
    for source in reward_set.sources:
        if source.name == name and source.kind == "judge":
            return source.spec.mode == "pairwise" and source.spec.against == "baseline"
    return False


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def write_json(path: str, report: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_json_safe(report), f, indent=2)
    os.replace(tmp, path)
    return path


def table(report: dict) -> str:
    names = list(report["metrics"])
    keys = list(dict.fromkeys(k for m in report["metrics"].values() for k in m))
    rows = [(key, *(f"{report['metrics'][n].get(key, float('nan')):.4g}" for n in names)) for key in keys]
    text = format_table(rows, ("metric", *names))
    win = report.get("win_rate")
    if win:
        text += (f"\nwin rate of {names[0]} over {names[1]} by {win['by']}: {win['rate']:.3f} "
                 f"(95% CI {win['low']:.3f}-{win['high']:.3f}; {win['wins']:g} wins, {win['ties']:g} ties, "
                 f"{win['losses']:g} losses of {win['n']})")
    return text


def evaluate_models(cfg, against: Optional[str] = None, by: Optional[str] = None, limit: Optional[int] = None) -> dict:
    """Generate, score and compare; returns the report (what the JSON holds)."""
    from pipeline.controller.ray_setup import init_ray

    reward_set = RewardSet.from_config(cfg)  # every source checked before anything starts
    accuracy_fn = eval_reward_fn(cfg.reward, cfg.data.task)
    _, rows = tasks.prompt_splits(cfg.data)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ValueError("eval: no held-out prompts (data.eval_files / data.num_eval)")
    names = reward_set.names
    if by is not None and by not in names + ["reward"]:
        raise ValueError(f"--by {by!r}: no such reward source; choose one of {names + ['reward']}")
    init_ray(cfg)
    models = [cfg.model.path] + ([against] if against else [])
    replies = [generate_replies(cfg, path, rows) for path in models]
    labels = ["model"] + (["against"] if against else [])
    keys = _baseline_keys(cfg)
    reward_set.start(None)
    try:
        scored = [
            model_metrics(reward_set, _request(rows, r, replies[1 - i] if against else None, keys), r, accuracy_fn)
            for i, r in enumerate(replies)
        ]
    finally:
        reward_set.shutdown()
    report = {
        "models": dict(zip(labels, models)),
        "prompts": len(rows),
        "metrics": {label: summary for label, (summary, _) in zip(labels, scored)},
    }
    if against:
        by = by or default_judge(reward_set)
        if _is_pairwise_baseline(reward_set, by):
            report["win_rate"] = win_rate(scored[0][1][by], None, by).to_dict()
        else:
            report["win_rate"] = win_rate(scored[0][1][by], scored[1][1][by], by).to_dict()
    report["samples"] = [
        {
            "source": row.source,
            "prompt": row.prompt_text,
            **{label: {"reply": r.completions[i], **{k: float(v[i]) for k, v in per.items()}}
               for label, r, (_, per) in zip(labels, replies, scored)},
        }
        for i, row in enumerate(rows)
    ]
    return report


def run_eval(cfg, against: Optional[str] = None, output: Optional[str] = None,
             by: Optional[str] = None, limit: Optional[int] = None) -> dict:
    """``rayppo eval``: evaluate, print the table, write the JSON (default ``logging.dir/eval.json``)."""
    from learners.models import model_dir_error

    cfg = copy.deepcopy(cfg)
    for where, path in (("model.path", cfg.model.path), ("--against", against)):
        problem = path and model_dir_error(path)
        if problem:
            raise ValueError(f"{where}: {problem}")
    report = evaluate_models(cfg, against, by, limit)
    path = write_json(output or os.path.join(cfg.logging.dir, "eval.json"), report)
    print(table(report))
    accuracy = report["metrics"]["model"].get("accuracy")
    if accuracy is not None:
        print(f"eval: accuracy {accuracy:.3f} on {report['prompts']} prompts")
    print(f"eval: wrote {path}")
    return report
