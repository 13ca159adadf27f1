"""Multi-turn rollout throughput: every conversation on its own vs. lockstep turns.

    python -m benchmarks.multiturn                       # tiny model, 7 measured rounds
    python -m benchmarks.multiturn --preset debug --rounds 3

One vLLM engine, built here the way an engine actor builds it, runs the same conversations
with the same seeds in two schedules that take turns (A B A B ..., warm-up discarded):

* ``async``: :class:`rollout_workers.conversation_loop.ConversationLoop` as training runs it; when a
  conversation's turn ends, its environment step runs while the engine goes on with the
  others, and its next turn joins the running batch as soon as the step returns;
* ``lockstep``: the baseline; every turn waits for the whole batch's generations, then for all
  of its environment steps, before any next turn starts.

The conversations differ the way real ones do: each turn of each conversation has its own
length, drawn (seeded) uniformly from the list ``--turn-tokens``, where a repeated value is
drawn more often (the default is heavy-tailed: mostly short replies, a few long ones), and
generated to exactly that length (``ignore_eos``, so both schedules do the same work);
conversations have 2 to ``--turns`` turns, and each environment step takes a seeded latency in
``[0, --env-ms]`` ms (a simulated user or tool). Reported: assistant tokens/s of each schedule (median over rounds) and their
ratio, with the machine; results go to ``--out`` (``results.json``, ``results.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time

from benchmarks.machine import load_average, machine, versions


def _draw(seed: int, *key: int) -> random.Random:
    return random.Random(hash((seed,) + key) & 0xFFFFFFFF)


class VariedTurnsEnv:
    """A dialogue whose number of turns and step latency vary by conversation (row metadata)."""

    def __init__(self, max_turns: int = 4, env_ms: float = 40.0, seed: int = 0):
        self.max_turns, self.env_ms, self.seed = max_turns, env_ms, seed

    def reset(self, row, seed):
        self.conversation = int(row.metadata["conversation"])
        self.turns = _draw(self.seed, self.conversation).randint(2, self.max_turns)
        self.k = 0
        return [{"role": "user", "content": row.messages[-1]["content"]}]

    async def step(self, messages, reply):
        await asyncio.sleep(_draw(self.seed, self.conversation, self.k).uniform(0, self.env_ms) / 1000)
        self.k += 1
        if self.k >= self.turns:
            return None, 0.0, True, {}
        return self.message(self.k), 0.0, False, {}

    @staticmethod
    def message(turn: int) -> str:
        return f"Tell me more, part {turn}."


def build_model(root: str, preset: str) -> str:
    from pipeline.config import RayppoConfig
    from pipeline.stages.init_model import ensure_model

    cfg = RayppoConfig()
    cfg.init.output_dir = os.path.join(root, preset)
    cfg.init.preset = preset
    cfg.init.corpus_size = 2000
    cfg.init.vocab_size = 512
    cfg.data.task = "memory"
    return ensure_model(cfg.init, cfg.data)


def run(args) -> dict:
    from transformers import AutoTokenizer

    from pipeline.config import load_config
    from pipeline.data import PromptRow
    from pipeline.envs.base import load_env
    from rollout_workers.conversation_loop import ConversationLoop, Limits
    from rollout_workers.turn_tokens import TurnTokens
    from rollout_workers.types import Sampling
    from rollout_workers.vllm_engine import VLLMEngine

    path = build_model(args.models, args.preset)
    choices = [int(x) for x in args.turn_tokens.split(",")]
    limit_rng = random.Random(args.seed)
    limits_table = [[limit_rng.choice(choices) for _ in range(args.turns)] for _ in range(args.conversations)]
    tokens = TurnTokens(AutoTokenizer.from_pretrained(path), path)
    # Room for the longest conversation's replies and the user's messages, so none is cut short.
    message = len(tokens.message({"role": "user", "content": VariedTurnsEnv.message(args.turns)})) + 1
    per_conversation = max(sum(row) for row in limits_table) + message * args.turns
    cfg = load_config(None, [
        "env.class=benchmarks.multiturn:VariedTurnsEnv",
        f"env.kwargs={{max_turns: {args.turns}, env_ms: {args.env_ms}, seed: {args.seed}}}",
        f"env.max_turns={args.turns}", f"env.max_tokens_per_turn={max(choices)}",
        f"env.max_tokens_per_conversation={per_conversation}", "data.max_prompt_tokens=64",
    ])
    rows = [PromptRow([{"role": "user", "content": f"Question {i}: tell me a story."}], None, f"row {i}",
                      metadata={"conversation": i}) for i in range(args.conversations)]
    engine = VLLMEngine(path, seed=args.seed, max_model_len=64 + per_conversation + 8, kv_cache_gib=1,
                        torch_threads=args.threads)
    loop = ConversationLoop(engine, tokens, load_env(cfg.env, rows[0]), Limits.from_config(cfg),
                            turn_limit=lambda conversation, turn: limits_table[conversation][turn])
    sampling = Sampling(n=1, temperature=1.0, ignore_eos=True)
    records: dict[str, list[dict]] = {"async": [], "lockstep": []}
    for round_index in range(args.warmup + args.rounds):
        for name in records:
            start = time.perf_counter()
            batch = loop.run(rows, sampling, step=round_index, base_seed=args.seed, lockstep=name == "lockstep")
            seconds = time.perf_counter() - start
            tokens = sum(sum(m) for m in batch.loss_masks)
            records[name].append({"round": round_index, "warmup": round_index < args.warmup, "seconds": seconds,
                                  "assistant_tokens": tokens, "tokens_per_s": tokens / seconds,
                                  "engine_steps": loop.engine_steps})
            print(f"  round {round_index} {name}: {seconds:.2f} s, {tokens} assistant tokens, "
                  f"{tokens / seconds:.0f} tokens/s, {loop.engine_steps} engine steps"
                  + (" (warm-up)" if round_index < args.warmup else ""))
    summary = {}
    for name, rows_ in records.items():
        measured = [r for r in rows_ if not r["warmup"]]
        summary[name] = {
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in measured),
            "median_seconds": statistics.median(r["seconds"] for r in measured),
            "median_engine_steps": statistics.median(r["engine_steps"] for r in measured),
            "assistant_tokens": measured[0]["assistant_tokens"],
            "rounds": rows_,
        }
    ratio = summary["async"]["median_tokens_per_s"] / summary["lockstep"]["median_tokens_per_s"]
    return {"preset": args.preset, "conversations": args.conversations, "turns": args.turns,
            "turn_tokens": choices, "env_ms": args.env_ms, "threads": args.threads, "ratio": ratio,
            "schedules": summary}


def markdown(result: dict, info: dict) -> str:
    m = info["machine"]
    lines = [
        "# Multi-turn rollout throughput: each conversation on its own vs. lockstep turns",
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
        f"Load average before/after: {info['load_before']} / {info['load_after']}.",
        "",
        f"Workload: `{result['preset']}` model, {result['conversations']} conversations of 2-{result['turns']} turns, "
        f"each turn generated to a length drawn uniformly from the list {result['turn_tokens']} (tokens), environment steps of "
        f"0-{result['env_ms']:g} ms, {result['threads']} engine threads; one vLLM engine, same seeds in both schedules.",
        "",
        "| schedule | assistant tokens/s (median) | seconds per batch | engine steps | assistant tokens |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in result["schedules"].items():
        lines.append(f"| {name} | {s['median_tokens_per_s']:.0f} | {s['median_seconds']:.2f} | "
                     f"{s['median_engine_steps']:.0f} | {s['assistant_tokens']} |")
    lines += ["", f"**async / lockstep: {result['ratio']:.2f}x** (target >= 1.5x).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model size preset (init.preset)")
    p.add_argument("--conversations", type=int, default=48)
    p.add_argument("--turns", type=int, default=6, help="most turns per conversation (2..turns)")
    # Most replies are short and a few are long, as in real dialogue: a value listed twice is
    # drawn twice as often. `--turn-tokens 4,8,16,32,64` is the uniform variant.
    p.add_argument("--turn-tokens", default="8,8,8,16,16,32,64", help="turn lengths drawn per turn (uniformly from the list)")
    p.add_argument("--env-ms", type=float, default=100.0,
                   help="most latency of one environment step (a simulated user model or tool call)")
    p.add_argument("--threads", type=int, default=2, help="engine intra-op threads")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="runs/bench/multiturn-models")
    p.add_argument("--out", default="benchmarks/results/multiturn")
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    info = {"machine": machine(), "versions": versions(), "load_before": load_average()}
    result = run(args)
    info["load_after"] = load_average()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**info, **result}, f, indent=2)
    text = markdown(result, info)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
