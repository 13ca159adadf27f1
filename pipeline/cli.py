"""``rayppo COMMAND CONFIG [key=value ...]``: each command is parse -> build -> run -> clean up."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import load_config

COMMANDS = {
    "init-model": "build a small model and tokenizer locally (init.*)",
    "sft": "supervised warm start on reference answers (sft.*), Ray Train + FSDP2",
    "train": "RL: vLLM rollout actors + FSDP2 learner group",
    "eval": "greedy accuracy of model.path on the held-out prompts",
    "all": "init-model and sft unless their outputs exist, then train; times each stage",
    "sweep": "Ray Tune search over tune.search_space, each trial a whole run (--resume continues one)",
}


def cmd_init_model(cfg) -> None:
    from pipeline.model_init import init_model

    print(f"init-model: wrote {init_model(cfg.init, cfg.data)}")


def cmd_sft(cfg) -> None:
    from pipeline.sft import run_sft

    run_sft(cfg)


def cmd_train(cfg) -> None:
    from pipeline.driver import Trainer

    trainer = Trainer(cfg)
    try:
        trainer.setup()
        trainer.train()
    finally:
        trainer.shutdown()


def cmd_eval(cfg) -> None:
    from pipeline.driver import Trainer

    cfg.algorithm.kl_coef = 0.0
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        print(f"eval: accuracy {trainer.evaluate()['eval/accuracy']:.3f} on {len(trainer.eval_ids)} prompts")
    finally:
        trainer.shutdown()


def cmd_sweep(cfg, resume: bool = False) -> None:
    from pipeline.sweep import run_sweep

    run_sweep(cfg, resume=resume)


def cmd_all(cfg) -> None:
    import os
    import time

    from pipeline.tracking import format_table

    stages = []
    for name, output, run in (
        ("init-model", cfg.init.output_dir, cmd_init_model),
        ("sft", cfg.sft.output_dir, cmd_sft),
        ("train", None, cmd_train),
    ):
        if output and os.path.isfile(os.path.join(output, "config.json")):
            print(f"{name}: {output} exists, skipped")
            stages.append((name, "skipped"))
            continue
        start = time.perf_counter()
        run(cfg)
        stages.append((name, f"{time.perf_counter() - start:.1f}"))
    print(format_table(stages, ("stage", "wall seconds")))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rayppo",
        description="RL fine-tuning of LLM chat models on Ray (vLLM rollouts, FSDP2 learners).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<11} {v}" for k, v in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides")
    parser.add_argument(
        "--resume", action="store_true", help="sweep: continue the interrupted sweep of this config"
    )
    args = parser.parse_intermixed_args(argv)
    if args.resume and args.command != "sweep":
        parser.error("--resume applies to 'sweep' only (training resumes with checkpoint.resume=latest)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as err:
        print(f"rayppo: config error: {err}", file=sys.stderr)
        return 2
    handler = {
        "init-model": cmd_init_model,
        "sft": cmd_sft,
        "train": cmd_train,
        "eval": cmd_eval,
        "all": cmd_all,
        "sweep": lambda c: cmd_sweep(c, resume=args.resume),
    }
    try:
        handler[args.command](cfg)
    except ValueError as err:
        print(f"rayppo {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
