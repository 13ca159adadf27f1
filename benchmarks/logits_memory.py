"""Peak memory of one learner rank at a real vocabulary: full logits vs the chunked head.

    python -m benchmarks.logits_memory                   # Qwen3 vocabulary, 3 rounds
    python -m benchmarks.logits_memory --family gemma3 --tokens 8192

A random model of the ``tiny`` preset is built around the family's real tokenizer (``make
tokenizers``), so the head and embeddings are ``vocab x 128``. Each measurement runs in a fresh
process: a one-rank FSDP2 :class:`learners.worker.LearnerWorker` computes old and reference
log-probabilities of one micro-batch (``--tokens`` tokens) and takes one PPO update with an
entropy bonus, then reports its peak RSS (``ru_maxrss``) above the RSS it held after loading
the models, and the seconds of compute + update. The two settings take turns (A B A B ...);
medians over ``--rounds`` are reported with their ratio. Results: ``--out`` (``results.json``,
``results.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.machine import load_average, machine, versions

SETTINGS = {"full logits": 0, "chunks of 1024 tokens": 1024, "chunks of 256 tokens": 256}


def _measure(model_dir: str, chunk: int, tokens: int) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np
    import psutil
    import torch

    from learners.batching import Samples
    from learners.worker import LearnerWorker
    from pipeline.config import load_config

    torch.set_num_threads(2)
    cfg = load_config(None, [
        f"model.path={model_dir}", "learner.num_ranks=1", "algorithm.kl_coef=0.05", "algorithm.entropy_coef=0.01",
        f"learner.micro_batch_tokens={tokens}", f"learner.logits_chunk_tokens={chunk}", "learner.mini_batches=1",
    ])
    worker = LearnerWorker(cfg, 0, 1)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker.setup("127.0.0.1", port)
    rng = np.random.default_rng(0)
    vocab = worker.policy.config.vocab_size
    # Groups of 8 samples sharing a 64-token prompt; responses fill the micro-batch.
    per_sample = 256
    count = max(1, tokens // per_sample)
    prompts = [rng.integers(0, vocab, 64).tolist() for _ in range(count // 8 or 1) for _ in range(8)][:count]
    responses = [rng.integers(0, vocab, per_sample - 64).tolist() for _ in range(count)]
    base = psutil.Process().memory_info().rss
    samples = Samples(prompts, responses, {})
    started = time.perf_counter()
    computed = worker.compute(samples, need_old_logprobs=True)
    samples.extras.update(
        old_logprobs=computed["old_logprobs"], ref_logprobs=computed["ref_logprobs"],
        advantages=[np.full(len(r), 0.5 if i % 2 else -0.5, np.float32) for i, r in enumerate(responses)],
    )
    metrics = worker.update(samples)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worker.shutdown()
    return {
        "vocab": vocab, "tokens": count * per_sample, "peak_rss_gib": peak / 2**30,
        "peak_above_loaded_gib": (peak - base) / 2**30, "seconds": seconds, "grad_norm": metrics["actor/grad_norm"],
    }


def _model(family: str, root: str) -> str:
    from pipeline.config import load_config
    from pipeline.stages.init_model import init_model

    cfg = load_config(None, [f"init.output_dir={root}/{family}", f"init.tokenizer_path={family}"])
    return init_model(cfg.init, cfg.data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen3", help="tokenizer family (make tokenizers)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens in the micro-batch (learner.micro_batch_tokens)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/logits-memory")
    parser.add_argument("--measure", nargs=2, metavar=("MODEL", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(args.measure[0], int(args.measure[1]), args.tokens)))
        return 0
    with tempfile.TemporaryDirectory() as root:
        model = _model(args.family, root)
        runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for r in range(args.rounds):
            for name, chunk in SETTINGS.items():
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.logits_memory", "--tokens", str(args.tokens), "--measure", model, str(chunk)],
                    check=True, capture_output=True, text=True,
                ).stdout.strip().splitlines()[-1]
                runs[name].append(json.loads(out))
                print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)
    summary = {
        name: {k: statistics.median(x[k] for x in rows) for k in ("peak_rss_gib", "peak_above_loaded_gib", "seconds")}
        for name, rows in runs.items()
    }
    full = summary["full logits"]
    result = {
        "family": args.family, "vocab": runs["full logits"][0]["vocab"], "tokens": runs["full logits"][0]["tokens"],
        "rounds": args.rounds, "median": summary, "runs": runs,
        "ratios": {
            name: {"peak_above_loaded": full["peak_above_loaded_gib"] / row["peak_above_loaded_gib"],
                   "seconds": row["seconds"] / full["seconds"]}
            for name, row in summary.items() if name != "full logits"
        },
        "machine": machine(), "versions": versions(), "load_average": load_average(),
        "date": time.strftime("%Y-%m-%d"),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        f"# Learner peak memory: full logits vs chunked head ({args.family}, vocabulary {result['vocab']:,})",
        "",
        f"{result['date']}, {result['machine'].get('cpu', '')}; one FSDP2 rank, tiny preset, one micro-batch of "
        f"{result['tokens']} tokens: old + reference log-probabilities and one PPO update with entropy. "
        f"Medians of {args.rounds} rounds, each in a fresh process.",
        "",
        "| setting | peak RSS (GiB) | peak above loaded models (GiB) | vs full logits | compute + update (s) | time vs full |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in summary.items():
        ratio = result["ratios"].get(name, {"peak_above_loaded": 1.0, "seconds": 1.0})
        lines.append(
            f"| {name} | {row['peak_rss_gib']:.2f} | {row['peak_above_loaded_gib']:.2f} | "
            f"{1 / ratio['peak_above_loaded']:.2f}x | {row['seconds']:.1f} | {ratio['seconds']:.2f}x |"
        )
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
