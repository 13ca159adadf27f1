"""``rayppo rlhf-report``: the closing report of the chat recipe (``make rlhf``).

On the held-out prompts of the config it compares the SFT model (``sft.output_dir``) with the RL
policy (``checkpoint.export_dir``):

* the reward model's pairwise accuracy on held-out pairs (from ``rm.output_dir``'s
  ``reward_stats.json``, measured by ``rayppo rm``);
* per model, on ``samples`` replies per prompt drawn at the training temperature and on the
  greedy reply: the gold score (the task's verifier, the hidden annotator), the RM score (as
  the ``model`` reward source normalises it), corpus BLEU, mean ROUGE-L and reply length;
* the gold difference RL - SFT per prompt, with a bootstrap 95% interval over prompts;
* KL(RL || SFT) per token, estimated on the RL model's own samples (teacher-forced log-ratio);
* the RM-vs-gold gap over training steps, from the run's ``metrics.jsonl``: the RM and gold
  means of each step's rollouts (a weight-0 ``gold`` source logs the latter) and the held-out
  evaluations, where reward over-optimisation shows first.

Generation here is ``transformers`` in this process (batched, no Ray): the models are the
small ones of the recipe, and a report must not depend on the cluster that trained them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import numpy as np
import torch

from learners.losses import logprobs_from_logits
from pipeline import data, tasks
from pipeline.config import RayppoConfig
from pipeline.infra.tracking import format_table, read_metrics_rows
from pipeline.rewards import eval_reward_fn, score_completions
from pipeline.rewards.similarity import corpus_similarity
from rollout_workers.reward_model import RewardModelScorer


@torch.no_grad()
def generate(model, prompts: list[list[int]], n: int, temperature: float, max_tokens: int, eos_id: int, pad_id: int,
             seed: int, batch: int = 128) -> list[list[int]]:
    """``n`` replies per prompt (prompt-major order), token ids up to and including eos."""
    torch.manual_seed(seed)
    out: list[list[int]] = []
    flat = [p for p in prompts for _ in range(n)]
    for lo in range(0, len(flat), batch):
        chunk = flat[lo : lo + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else dict(do_sample=False)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, eos_token_id=eos_id,
                             pad_token_id=pad_id, **sampling)[:, width:]
        for row in gen.tolist():
            cut = row.index(eos_id) + 1 if eos_id in row else len(row)
            out.append(row[:cut])
    return out


@torch.no_grad()
def sequence_logprobs(model, prompts: list[list[int]], replies: list[list[int]], pad_id: int, batch: int = 128) -> list[float]:
    """Summed log-probability of each reply given its prompt (teacher-forced)."""
    totals = []
    for lo in range(0, len(replies), batch):
        seqs = [p + r for p, r in zip(prompts[lo : lo + batch], replies[lo : lo + batch])]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        logprobs = logprobs_from_logits(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), ids[:, 1:])
        for i, (p, r) in enumerate(zip(prompts[lo : lo + batch], replies[lo : lo + batch])):
            totals.append(float(logprobs[i, len(p) - 1 : len(p) - 1 + len(r)].sum()))
    return totals


def bootstrap_interval(values: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` over bootstrap resamples."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _score(cfg: RayppoConfig, rows, replies: list[str], per_prompt: int, rm_scorer) -> dict:
    """Gold, RM, BLEU, ROUGE-L and length of replies (``per_prompt`` consecutive per row)."""
    sample_rows = [row for row in rows for _ in range(per_prompt)]
    gold_fn = eval_reward_fn(cfg.reward, cfg.data.task)
    gold, _ = score_completions(gold_fn, [r.prompt_text for r in sample_rows], replies, [r.answer for r in sample_rows])
    rm = np.asarray(rm_scorer.score([r.messages for r in sample_rows], replies)["scores"]) if rm_scorer else np.full(len(replies), np.nan)
    similarity = corpus_similarity(replies, [r.references for r in sample_rows])
    return {
        "gold": gold, "rm": rm,
        "bleu": similarity.get("bleu", float("nan")), "rougeL": similarity.get("rougeL", float("nan")),
    }


def evaluate_model(cfg: RayppoConfig, path: str, rows, samples: int, rm_scorer, seed: int) -> dict:
    """One model's sampled and greedy replies to ``rows``, scored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code).eval()
    prompts = data.encode_prompts(tokenizer, rows, cfg.data.max_prompt_tokens)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result = {"path": path, "model": model, "prompts": prompts, "pad": pad}
    for mode, n, temperature in (("sampled", samples, cfg.rollout.temperature), ("greedy", 1, 0.0)):
        ids = generate(model, prompts, n, temperature, cfg.rollout.max_tokens, eos, pad, seed)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        scored = _score(cfg, rows, texts, n, rm_scorer)
        scored.update(ids=ids, texts=texts, length=np.asarray([len(i) for i in ids], dtype=float), n=n)
        result[mode] = scored
    return result


def sample_pair_agreement(gold: np.ndarray, rm: np.ndarray, per_prompt: int, min_gap: float = 0.05) -> dict:
    """How often the RM orders two sampled replies to the same prompt as gold does, over the
    pairs whose gold scores differ by at least ``min_gap`` (a tie in RM counts half): the RM's
    accuracy on the replies a policy actually writes, not on the annotated pairs."""
    gold, rm = gold.reshape(-1, per_prompt), rm.reshape(-1, per_prompt)
    agree, pairs = 0.0, 0
    for g, r in zip(gold, rm):
        for i in range(per_prompt):
            for j in range(i + 1, per_prompt):
                if np.isnan(g[i]) or np.isnan(g[j]) or np.isnan(r[i]) or np.isnan(r[j]) or abs(g[i] - g[j]) < min_gap:
                    continue
                pairs += 1
                agree += 0.5 if r[i] == r[j] else float((r[i] > r[j]) == (g[i] > g[j]))
    return {"accuracy": agree / pairs if pairs else float("nan"), "pairs": pairs}


def gap_over_steps(metrics_path: str, rm_name: str, gold_name: str) -> list[dict]:
    """Per logged step: the RM and gold means of the rollouts, and the held-out evaluation."""
    if not os.path.isfile(metrics_path):
        return []
    rows = []
    for m in read_metrics_rows(metrics_path):
        row = {
            "step": m.get("step"),
            "rm": m.get(f"reward/{rm_name}/mean"),
            "gold": m.get(f"reward/{gold_name}/mean"),
            "eval_rm": m.get(f"eval/reward/{rm_name}/mean"),
            "eval_gold": m.get("eval/accuracy"),
            "kl": m.get("kl/mean"),
            "length": m.get("response/length_mean"),
        }
        if any(v is not None for k, v in row.items() if k != "step"):
            rows.append(row)
    return rows


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _source_names(cfg: RayppoConfig) -> tuple[Optional[str], str, Optional[str]]:
    """(RM source name, gold source name, RM path) from ``reward.sources``."""
    rm_name, rm_path, gold_name = None, None, "gold"
    for source in cfg.reward.sources:
        if source.get("kind") == "model" and rm_name is None:
            rm_name, rm_path = source.get("name") or "model", source.get("path")
        if source.get("kind") == "rule" and float(source.get("weight", 1.0)) == 0.0:
            gold_name = source.get("name") or "rule"
    return rm_name, gold_name, rm_path


def build_report(cfg: RayppoConfig, samples: int = 4, limit: Optional[int] = None) -> dict:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rm_name, gold_name, rm_path = _source_names(cfg)
    rm_path = rm_path or cfg.rm.output_dir
    rows = tasks.prompt_splits(cfg.data)[1][:limit]
    if not rows:
        raise ValueError("rlhf-report: there are no held-out prompts (data.num_eval / data.eval_files)")
    policy = cfg.checkpoint.export_dir
    for name, path in (("sft.output_dir", cfg.sft.output_dir), ("checkpoint.export_dir", policy), ("reward model", rm_path)):
        if not path or not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"rlhf-report: {name} {path!r} holds no model (run the recipe's stages first)")
    scorer = RewardModelScorer(rm_path, batch_size=64)
    models = {"sft": evaluate_model(cfg, cfg.sft.output_dir, rows, samples, scorer, cfg.seed),
              "rl": evaluate_model(cfg, policy, rows, samples, scorer, cfg.seed)}
    report: dict = {"prompts": len(rows), "samples_per_prompt": samples, "models": {}}
    for name, result in models.items():
        report["models"][name] = {"path": result["path"]}
        for mode in ("sampled", "greedy"):
            scored = result[mode]
            report["models"][name][mode] = {
                "gold": float(np.nanmean(scored["gold"])), "rm": float(np.nanmean(scored["rm"])),
                "bleu": scored["bleu"], "rougeL": scored["rougeL"], "length": float(scored["length"].mean()),
            }
    per_prompt = {k: np.nanmean(models[k]["sampled"]["gold"].reshape(len(rows), samples), axis=1) for k in models}
    diff = per_prompt["rl"] - per_prompt["sft"]
    low, high = bootstrap_interval(diff, seed=cfg.seed)
    report["gold_gain"] = {"mean": float(diff.mean()), "ci95": [low, high], "per_prompt_std": float(diff.std(ddof=1)),
                           "rl_wins": float(np.mean(diff > 0)), "ties": float(np.mean(diff == 0))}
    report["rm_on_samples"] = {
        name: sample_pair_agreement(models[name]["sampled"]["gold"], models[name]["sampled"]["rm"], samples) for name in models
    }
    rl = models["rl"]
    flat_prompts = [p for p in rl["prompts"] for _ in range(samples)]
    replies = rl["sampled"]["ids"]
    own = sequence_logprobs(rl["model"], flat_prompts, replies, rl["pad"])
    ref = sequence_logprobs(models["sft"]["model"], flat_prompts, replies, rl["pad"])
    tokens = max(1, sum(len(r) for r in replies))
    report["kl_per_token"] = float((np.sum(own) - np.sum(ref)) / tokens)
    report["kl_per_reply"] = float(np.mean(np.asarray(own) - np.asarray(ref)))
    stats_file = os.path.join(rm_path, "reward_stats.json")
    with open(stats_file, encoding="utf-8") as f:
        report["rm_eval"] = json.load(f).get("eval", {})
    report["gap_over_steps"] = gap_over_steps(os.path.join(cfg.logging.dir, "metrics.jsonl"), rm_name or "rm", gold_name)
    report["examples"] = [
        {"prompt": rows[i].prompt_text, "sft": models["sft"]["greedy"]["texts"][i], "rl": models["rl"]["greedy"]["texts"][i]}
        for i in range(min(3, len(rows)))
    ]
    return report


def format_report(report: dict) -> str:
    lines = []
    rm_eval = report["rm_eval"]
    lines.append(f"reward model: held-out pairwise accuracy {_fmt(rm_eval.get('pairwise_accuracy'))} on "
                 f"{rm_eval.get('pairs', '?')} pairs, mean margin {_fmt(rm_eval.get('mean_margin'))}")
    on_samples = report.get("rm_on_samples", {})
    if on_samples:
        lines.append("reward model on the policies' own samples (pairs of replies to one prompt, gold gap >= 0.05): "
                     + ", ".join(f"{name.upper()} {_fmt(v['accuracy'])} of {v['pairs']}" for name, v in on_samples.items()))
    rows = []
    for mode in ("sampled", "greedy"):
        for name in ("sft", "rl"):
            m = report["models"][name][mode]
            rows.append((f"{name.upper()} ({mode})", _fmt(m["gold"]), _fmt(m["rm"]), _fmt(m["bleu"], 1), _fmt(m["rougeL"]), _fmt(m["length"], 1)))
    header = ("model", "gold", "RM score", "BLEU", "ROUGE-L", "length")
    lines.append(f"held-out prompts: {report['prompts']}; sampled: {report['samples_per_prompt']} replies per prompt at the training temperature")
    lines.append(format_table(rows, header))
    gain = report["gold_gain"]
    lines.append(
        f"gold RL - SFT (sampled, per prompt): {gain['mean']:+.3f}, bootstrap 95% CI [{gain['ci95'][0]:+.3f}, "
        f"{gain['ci95'][1]:+.3f}], per-prompt std {gain['per_prompt_std']:.3f}, RL better on {gain['rl_wins']:.0%} of prompts"
    )
    lines.append(f"KL(RL || SFT) on RL samples: {report['kl_per_token']:.4f} per token, {report['kl_per_reply']:.3f} per reply")
    gap = report["gap_over_steps"]
    if gap:
        every = max(1, len(gap) // 12)
        shown = [r for i, r in enumerate(gap) if i % every == 0 or i == len(gap) - 1]
        lines.append("RM vs gold over training (rollouts: RM normalised, gold 0..1; eval: greedy held-out replies):")
        lines.append(format_table(
            [(str(r["step"]), _fmt(r["rm"]), _fmt(r["gold"]), _fmt(r["eval_rm"]), _fmt(r["eval_gold"]), _fmt(r["kl"], 4), _fmt(r["length"], 1))
             for r in shown],
            ("step", "RM", "gold", "eval RM", "eval gold", "KL", "length"),
        ))
    return "\n".join(lines)


def run_report(cfg: RayppoConfig, output: Optional[str] = None, samples: int = 4, limit: Optional[int] = None) -> dict:
    """Build, print and save (``logging.dir/rlhf_report.json`` by default) the report."""
    report = build_report(cfg, samples=samples, limit=limit)
    print(format_report(report))
    output = output or os.path.join(cfg.logging.dir, "rlhf_report.json")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, output)
    print(f"rlhf-report: wrote {output}")
    return report
