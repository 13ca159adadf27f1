"""Reward sources in parallel: what scoring every source at once, during the learners' reference
pass, saves over scoring them one after another before it.

    python -m benchmarks.reward_overlap --preset tiny --rounds 6

One :class:`pipeline.stages.train.Trainer` with a reward model (its own actor), an LLM judge (a vLLM
actor), ROUGE-L and a rule. Each round runs one RL step in each of three schedules, taking
turns on the same actors and engines (A B C A B C ...):

* ``sequential``: each source is scored alone, one after another, then the reference pass;
* ``concurrent``: every source at once, waited for, then the reference pass;
* ``overlapped``: every source at once, the reference pass, then the wait (what the driver does).

Reported: medians of ``time/reward + time/logprobs`` (the part of the step the schedule
changes) and of the whole step, and each source's own seconds. Results go to
``benchmarks/results/reward-overlap/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from benchmarks.machine import load_average, machine, versions


def digit_fraction(prompt: str, completion: str, answer) -> float:
    """The rule source: share of digits in the completion, which varies across samples even for
    a random model (the rows have no task, so there is no built-in verifier)."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


class Sequential:
    """A :class:`RewardSet` scored inside ``submit``, one source after another."""

    def __init__(self, rewards):
        self.rewards = rewards

    def submit(self, request):
        return [source.collect(source.submit(request)) for source in self.rewards.sources]

    def collect(self, results):
        total = self.rewards.total(results)
        return total, self.rewards.metrics(total, results)

    def __getattr__(self, name):
        return getattr(self.rewards, name)


class Concurrent(Sequential):
    """Every source submitted at once, but waited for inside ``submit`` (before the reference pass)."""

    def submit(self, request):
        return self.rewards.collect_results(self.rewards.submit(request))


def build_models(root: str, preset: str) -> tuple[str, str]:
    """A policy of ``preset`` (random weights, the task's tokenizer) and a reward model on its
    backbone with a fresh one-label head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.config import RayppoConfig
    from pipeline.stages.init_model import init_model

    cfg = RayppoConfig()
    cfg.init.output_dir, cfg.init.preset = os.path.join(root, "policy"), preset
    cfg.init.corpus_size, cfg.init.vocab_size = 2000, 512
    policy = init_model(cfg.init, cfg.data)
    rm = os.path.join(root, "rm")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1).save_pretrained(rm)
    AutoTokenizer.from_pretrained(policy).save_pretrained(rm)
    return policy, rm


def write_rows(path: str, count: int, offset: int) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            a, b = (i * 7 + offset) % 90 + 10, (i * 13 + offset) % 90 + 10
            f.write(json.dumps({"prompt": f"Compute {a}+{b}.", "answer": str(a + b), "references": [str(a + b)]}) + "\n")
    return path


def bench_config(root: str, policy: str, rm: str, args):
    from pipeline.config import load_config

    sources = [
        {"kind": "rule", "name": "digits", "function": "benchmarks.reward_overlap:digit_fraction"},
        {"kind": "model", "name": "rm", "path": rm, "batch_size": 32, "cpus": 1, "weight": 0.5},
        {"kind": "judge", "name": "judge", "path": policy, "template": "pointwise_digit", "score_max": 9,
         "temperature": 1.0, "max_tokens": args.judge_tokens, "cpus": 1, "weight": 0},
        {"kind": "similarity", "name": "rougeL", "metric": "rougeL", "weight": 0.5},
    ]
    return load_config(None, [
        f"model.path={policy}", "eval_every=0", f"prompts_per_step={args.prompts}", "data.task=null",
        f"data.train_files=[{write_rows(os.path.join(root, 'train.jsonl'), 256, 0)}]",
        f"data.eval_files=[{write_rows(os.path.join(root, 'eval.jsonl'), 8, 5)}]",
        f"rollout.n_samples={args.samples}", f"rollout.max_tokens={args.tokens}", "rollout.ignore_eos=true",
        "rollout.kv_cache_gib=1", "learner.num_ranks=2", "algorithm.advantage=grpo", "algorithm.kl_coef=0.04",
        f"reward.sources={json.dumps(sources)}", "resources.local_num_cpus=8",
        f"checkpoint.dir={os.path.join(root, 'checkpoints')}", "checkpoint.export_dir=null",
        f"logging.dir={os.path.join(root, 'logs')}", "logging.wandb_mode=disabled", "logging.progress_bar=false",
    ])


def run(args) -> dict:
    from pipeline.stages.train import Trainer

    root = tempfile.mkdtemp(prefix="rayppo-reward-overlap-")
    policy, rm = build_models(root, args.preset)
    cfg = bench_config(root, policy, rm, args)
    load_before = load_average()
    trainer = Trainer(cfg)
    trainer.setup()
    rewards = trainer.rewards
    schedules = {"sequential": Sequential(rewards), "concurrent": Concurrent(rewards), "overlapped": rewards}
    steps: dict[str, list[dict]] = {name: [] for name in schedules}
    try:
        for round_index in range(args.warmup + args.rounds):
            for name, schedule in schedules.items():
                trainer.rewards = schedule
                start = time.perf_counter()
                metrics = trainer.step()
                metrics["step_seconds"] = time.perf_counter() - start
                if round_index >= args.warmup:
                    steps[name].append(metrics)
    finally:
        trainer.rewards = rewards
        trainer.shutdown()
    keys = ["time/reward", "time/logprobs", "step_seconds"] + [f"reward/{n}/seconds" for n in rewards.names]
    medians = {
        name: {k: statistics.median(m[k] for m in rows) for k in keys} for name, rows in steps.items()
    }
    for row in medians.values():
        row["reward+logprobs"] = row["time/reward"] + row["time/logprobs"]
    return {
        "machine": machine(), "versions": versions(), "load_before": load_before, "load_after": load_average(),
        "settings": vars(args), "medians": medians, "steps": steps,
    }


def markdown(result: dict) -> str:
    m = result["medians"]
    base = m["sequential"]["reward+logprobs"]
    names = [k.split("/")[1] for k in m["overlapped"] if k.startswith("reward/")]
    lines = [
        "| schedule | reward + logprobs s | vs sequential | reward s | logprobs s | step s | "
        + " | ".join(f"{n} s" for n in names) + " |",
        "| --- " * (6 + len(names)) + "|",
    ]
    for name, row in m.items():
        lines.append(
            f"| {name} | {row['reward+logprobs']:.3f} | {row['reward+logprobs'] / base:.2f}x | {row['time/reward']:.3f} | "
            f"{row['time/logprobs']:.3f} | {row['step_seconds']:.3f} | "
            + " | ".join(f"{row[f'reward/{n}/seconds']:.3f}" for n in names) + " |"
        )
    s = result["settings"]
    cpu = result["machine"]
    lines.append(
        f"\n{cpu['cpu']}, {cpu['cores']} cores; preset {s['preset']}, {s['prompts']} prompts x {s['samples']} samples "
        f"x {s['tokens']} tokens, judge {s['judge_tokens']} tokens; medians of {s['rounds']} rounds after "
        f"{s['warmup']} warm-up; load {result['load_before']} -> {result['load_after']}"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "debug", "small"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--judge-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "reward-overlap"))
    args = parser.parse_args(argv)
    result = run(args)
    os.makedirs(args.out, exist_ok=True)
    tag = args.preset
    with open(os.path.join(args.out, f"results-{tag}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(os.path.join(args.out, f"results-{tag}.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
