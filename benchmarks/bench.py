"""``make bench``: rayppo vs TRL's GRPOTrainer on workload W1, plus micro-benchmarks.

    python -m benchmarks.bench                       # W1-cpu (tiny, small) or W1-gpu (small, 0.5b)
    python -m benchmarks.bench --presets small --steps 3 --no-micro
    python -m benchmarks.bench --variant threads1="rollout.torch_threads=0"

Every preset: build the model (once, under ``--models``), start every runner (rayppo, TRL when
installed, and each ``--variant``: rayppo with config overrides, for before/after measurements
of a setting), then let them take turns one step at a time. Results go to ``--out``
(``results.json``, ``results.md``, ``results.png``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from benchmarks import machine, micro, report
from benchmarks.compare import alternate
from benchmarks.run_rayppo import RayppoRunner, rayppo_config
from benchmarks.w1 import data_config, model_dir, param_count, step_flops, workload


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("cpu", "gpu", "auto"), default="auto",
                   help="W1-cpu (16 prompts x 8 x 64) or W1-gpu (64 x 8 x 256); auto: by device")
    p.add_argument("--presets", default=None, help="comma list; default tiny,small (cpu) / small,0.5b (gpu)")
    p.add_argument("--warmup", type=int, default=2, help="rounds discarded per runner")
    p.add_argument("--steps", type=int, default=5, help="measured rounds per runner")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every compute phase")
    p.add_argument("--no-trl", action="store_true", help="rayppo only (TRL is an optional extra)")
    p.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="extra rayppo runner: NAME=key=value[,key=value...] (repeatable)")
    p.add_argument("--variant-presets", default=None,
                   help="presets that also run the variants (default: all)")
    p.add_argument("--models", default="runs/bench/models", help="where W1 models are built")
    p.add_argument("--run-dir", default="runs/bench", help="scratch outputs of the runs")
    p.add_argument("--out", default="benchmarks/results", help="results directory")
    p.add_argument("--readme", default=None, help="README.md whose Benchmarks section is updated")
    return p.parse_args(argv)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not name or not overrides:
        raise ValueError(f"--variant {text!r}: expected NAME=key=value[,key=value...]")
    return name, [o for o in overrides.split(",") if o]


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def prompt_tokens_mean(model_path: str, rows) -> float:
    from transformers import AutoTokenizer

    from pipeline.data import encode_prompts

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ids = encode_prompts(tokenizer, rows[:256], data_config().max_prompt_tokens)
    return statistics.mean(len(x) for x in ids)


def run_preset(args, preset: str, on_gpu: bool, peak: dict, variants, log) -> dict:
    from pipeline import tasks

    w = workload(args.size, preset, on_gpu, args.threads)
    path = model_dir(args.models, preset)
    rows, _ = tasks.prompt_splits(data_config(w.seed))
    n_params = param_count(path)
    prompt_tokens = prompt_tokens_mean(path, rows)
    flops = step_flops(w, n_params, prompt_tokens)
    floor_s = sum(flops.values()) / (peak["gflops"] * 1e9)
    log(f"{w.name}: {n_params / 1e6:.1f} M params, prompt {prompt_tokens:.1f} tokens, "
        f"floor {floor_s:.2f} s at {peak['gflops']:.0f} GFLOP/s")

    run_dir = os.path.join(args.run_dir, preset)
    runners = []
    try:
        rayppo_cfg = rayppo_config(w, path, os.path.join(run_dir, "rayppo"))
        runners.append(RayppoRunner(rayppo_cfg))
        if not args.no_trl and trl_available():
            from benchmarks.run_trl import TRLRunner

            total = args.warmup + args.steps + 1
            runners.append(TRLRunner(w, path, os.path.join(run_dir, "trl"), rows, max_steps=total))
        run_variants = args.variant_presets is None or preset in args.variant_presets.split(",")
        for name, overrides in variants if run_variants else []:
            runner = RayppoRunner(rayppo_config(w, path, os.path.join(run_dir, name), *overrides))
            runner.name = f"rayppo[{name}]"
            runner.overrides = overrides
            runners.append(runner)
        log(f"  runners: {[r.name for r in runners]}; alternating {args.warmup} warm-up + {args.steps} rounds")
        summaries = alternate(runners, args.warmup, args.steps, log)
        result = {
            "workload": w.to_dict(),
            "params": n_params,
            "prompt_tokens_mean": prompt_tokens,
            "flops": flops,
            "floor_s": floor_s,
            "runners": summaries,
            "overrides": {r.name: getattr(r, "overrides", []) for r in runners},
            "setup_s": {r.name: r.setup_seconds for r in runners},
        }
        ray_summary = summaries["rayppo"]
        phases = ray_summary.get("phases_median_s", {})
        result["rayppo_floor_multiple"] = ray_summary["median_s"] / floor_s
        if "trl" in summaries:
            result["ratio"] = ray_summary["median_s"] / summaries["trl"]["median_s"]
            result["trl_floor_multiple"] = summaries["trl"]["median_s"] / floor_s
        result["learner"] = micro.learner_rate(
            w, n_params, prompt_tokens, phases.get("update", float("nan")),
            phases.get("logprobs", 0.0), peak["gflops"])
        main = runners[0]
        ids = [main.trainer.train_ids[i] for i in range(w.prompts)]
        log("  probe check: generate with and without the probe")
        probe = micro.probe_cost(main.trainer.rollouts, ids, micro.w1_sampling(w), main.trainer.probe, repeats=5)
        result["weight_sync"] = micro.weight_sync(preset, n_params, 2 if w.bf16 else 4, ray_summary, probe)
        if not args.no_micro:
            log("  engines: vLLM vs transformers")
            result["engines"] = micro.engines(rayppo_cfg, w, ids, main.trainer.rollouts, repeats=3)
            base = (w.prompts, w.completion_tokens)
            sizes = [(base[0], base[1] // 4), (base[0], base[1] // 2), base]
            log("  scaling with tokens per step")
            result["scaling_tokens"] = micro.scale_tokens(main, w, sizes, steps=2, log=log)
        return result
    finally:
        for runner in runners:
            runner.close()


def scale_workers(args, preset: str, on_gpu: bool, log) -> list[dict]:
    """Step time with 1 and 2 rollout workers; the engines split the threads between them."""
    from benchmarks.compare import alternate

    w = workload(args.size, preset, on_gpu, args.threads)
    path = model_dir(args.models, preset)
    runners = []
    try:
        for workers in (1, 2):
            threads = max(1, args.threads // workers)
            cfg = rayppo_config(w, path, os.path.join(args.run_dir, f"workers{workers}"),
                                f"rollout.num_workers={workers}", f"rollout.torch_threads={threads}")
            runner = RayppoRunner(cfg)
            runner.name = f"rayppo[{workers} workers]"
            runners.append(runner)
        summaries = alternate(runners, 1, 3, log)
    finally:
        for runner in runners:
            runner.close()
    return [
        {"workers": workers, "median_s": s["median_s"],
         "generate_s": s.get("phases_median_s", {}).get("generate"),
         "tokens_per_s": w.completion_tokens_per_step / s["median_s"]}
        for workers, s in zip((1, 2), summaries.values())
    ]


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if args.size == "auto":
        args.size = "gpu" if on_gpu else "cpu"
    presets = (args.presets or ("small,0.5b" if args.size == "gpu" else "tiny,small")).split(",")
    variants = [parse_variant(v) for v in args.variant]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = {
        "machine": machine.machine(),
        "versions": machine.versions(),
        "load_before": machine.load_average(),
        "threads": args.threads,
        "size": args.size,
        "warmup": args.warmup,
        "steps": args.steps,
        "trl": (not args.no_trl) and trl_available(),
    }
    results["peak"] = machine.matmul_peak_gflops(args.threads, on_gpu)
    log(f"matmul peak: {results['peak']['gflops']:.1f} GFLOP/s ({results['peak']['dtype']})")
    results["workloads"] = [run_preset(args, p, on_gpu, results["peak"], variants, log) for p in presets]
    if not args.no_micro:
        log("scaling with rollout workers")
        results["scaling_workers"] = {"preset": presets[0],
                                      "runs": scale_workers(args, presets[0], on_gpu, log)}
    results["load_after"] = machine.load_average()
    paths = report.write(results, args.out)
    if args.readme:
        report.update_readme(args.readme, report.markdown(results, short=True))
    log("wrote " + ", ".join(paths))
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
