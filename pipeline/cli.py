"""``rayppo COMMAND ...``: each command is parse -> build -> run -> clean up.

Most commands take ``CONFIG [key=value ...]`` (a YAML run config and overrides); a command that
needs other arguments (a model directory, a rater's name) declares them in its entry of
:data:`COMMANDS`. The work lives in the roles; a handler here is a few lines.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from pipeline.config import load_config
from pipeline.rewards.stall import RewardStall


@dataclass
class Command:
    """One ``rayppo`` command."""

    help: str
    run: Callable[[argparse.Namespace], None]
    """Called with the parsed arguments; ``args.cfg`` is the loaded config when ``takes_config``."""
    takes_config: bool = True
    """``CONFIG [key=value ...]`` are the first arguments."""
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
    """Adds the command's own flags (and positionals) to its parser."""


def cmd_init_model(args) -> None:
    from pipeline.stages.init_model import init_model

    print(f"init-model: wrote {init_model(args.cfg.init, args.cfg.data)}")


def cmd_sft(args) -> None:
    from pipeline.stages.sft import run_sft

    run_sft(args.cfg)


def cmd_rm(args) -> None:
    from pipeline.stages.rm import run_rm

    run_rm(args.cfg)


def cmd_rlhf_report(args) -> None:
    from pipeline.stages.chat_report import run_report

    run_report(args.cfg, output=args.output, samples=args.samples, limit=args.limit)


def _rlhf_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=4, help="sampled replies per held-out prompt (default 4)")
    parser.add_argument("--limit", type=int, help="use only the first N held-out prompts")
    parser.add_argument("--output", help="JSON report path (default: logging.dir/rlhf_report.json)")


def cmd_train(args) -> None:
    from pipeline.stages.train import Trainer

    trainer = Trainer(args.cfg)
    try:
        trainer.setup()
        trainer.train()
    finally:
        trainer.shutdown()


def cmd_eval(args) -> None:
    from pipeline.stages.evaluate import run_eval

    run_eval(args.cfg, against=args.against, output=args.output, by=args.by, limit=args.limit)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--against", help="a second model (HF dir) to compare model.path with")
    parser.add_argument("--by", help="reward source the win rate is judged by (default: the first judge or model source)")
    parser.add_argument("--output", help="JSON report path (default: logging.dir/eval.json)")
    parser.add_argument("--limit", type=int, help="score only the first N held-out prompts")


def cmd_serve_reward(args) -> None:
    from pipeline.stages.serve_reward import serve

    serve(args.cfg)


def cmd_sweep(args) -> None:
    from pipeline.stages.sweep import run_sweep

    run_sweep(args.cfg, resume=args.resume)


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this config")


def cmd_all(args) -> None:
    import os
    import time

    from pipeline.infra.tracking import format_table

    cfg = args.cfg
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
        run(args)
        stages.append((name, f"{time.perf_counter() - start:.1f}"))
    print(format_table(stages, ("stage", "wall seconds")))


def cmd_chat(args) -> None:
    from pipeline.stages.chat import run

    run(args)


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.stages.chat import add_arguments

    add_arguments(parser)


def cmd_feedback(args) -> None:
    from pipeline.feedback.cli import run

    run(args)


def _feedback_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.feedback.cli import add_arguments

    add_arguments(parser)


COMMANDS: dict[str, Command] = {
    "init-model": Command("build a small model and tokenizer locally (init.*)", cmd_init_model),
    "sft": Command("supervised fine-tuning on conversations or reference answers (sft.*), Ray Train + FSDP2", cmd_sft),
    "rm": Command("reward model from preference pairs (rm.*), Ray Train + FSDP2", cmd_rm),
    "rlhf-report": Command(
        "SFT vs RL policy on held-out prompts: gold, RM, BLEU/ROUGE-L, KL, length, RM-vs-gold over steps",
        cmd_rlhf_report, add_arguments=_rlhf_report_arguments,
    ),
    "train": Command("RL: vLLM rollout actors + FSDP2 learner group", cmd_train),
    "eval": Command(
        "score model.path (and --against OTHER: win rate, 95% CI) on held-out prompts with every reward source",
        cmd_eval, add_arguments=_eval_arguments,
    ),
    "serve-reward": Command(
        "serve reward.sources over HTTP (reward.server.*: 127.0.0.1, bearer token)", cmd_serve_reward,
    ),
    "all": Command("init-model and sft unless their outputs exist, then train; times each stage", cmd_all),
    "sweep": Command(
        "Ray Tune search over tune.search_space, each trial a whole run (--resume continues one)",
        cmd_sweep,
        add_arguments=_sweep_arguments,
    ),
    "chat": Command(
        "chat in the terminal with a model, export or checkpoint (streamed; /reset /system /save)",
        cmd_chat, takes_config=False, add_arguments=_chat_arguments,
    ),
    "feedback": Command(
        "human feedback app: serve | add-rater | add-tasks | export | stats",
        cmd_feedback, takes_config=False, add_arguments=_feedback_arguments,
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayppo",
        description="RL fine-tuning of LLM chat models on Ray (vLLM rollouts, FSDP2 learners).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<13} {v.help}" for k, v in COMMANDS.items())
        + "\n\n`rayppo COMMAND -h` shows a command's arguments.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The command's arguments (``args.command`` names it)."""
    top = _top_parser()
    # The command alone picks the parser, so each command has flags of its own.
    name = top.parse_args(argv[:1]).command
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"rayppo {name}", description=command.help)
    if command.takes_config:
        parser.add_argument("config", help="YAML config file (see configs/)")
        parser.add_argument("overrides", nargs="*", help="section.field=value overrides")
    if command.add_arguments is not None:
        command.add_arguments(parser)
    try:
        args = parser.parse_intermixed_args(argv[1:])
    except TypeError:  # a parser with sub-commands cannot mix positionals and flags
        args = parser.parse_args(argv[1:])
    args.command = name
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    command = COMMANDS[args.command]
    if command.takes_config:
        try:
            args.cfg = load_config(args.config, args.overrides)
        except ValueError as err:
            print(f"rayppo: config error: {err}", file=sys.stderr)
            return 2
    try:
        command.run(args)
    except ValueError as err:
        print(f"rayppo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RewardStall as err:  # the run cannot learn: its cause, not a traceback
        print(f"rayppo {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
