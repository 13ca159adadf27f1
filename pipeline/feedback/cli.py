"""``rayppo feedback SUB-COMMAND``: serve, add-rater, add-tasks, export, stats.

Every sub-command takes ``--db`` (a SQLite path or any SQLAlchemy URL; default
``$RAYPPO_FEEDBACK_DB`` or ``runs/feedback/feedback.db``). The flags are the whole interface:
the feedback app needs no run config.
"""

from __future__ import annotations

import argparse
import json
import os

from pipeline.feedback.storage import DEFAULT_DB, TASK_KINDS


def _default_db() -> str:
    return os.environ.get("RAYPPO_FEEDBACK_DB", DEFAULT_DB)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="feedback_command", required=True, metavar="SUB-COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", default=_default_db(), help="SQLite file or SQLAlchemy URL (default: %(default)s)")
        return p

    p = command("serve", "run the web app raters use")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes sharing the database")
    p.add_argument("--chat-engine", choices=("vllm", "hf"), default="vllm", help="engine serving live-chat tasks")
    p.add_argument("--trust-remote-code", action="store_true")

    p = command("add-rater", "create a rater and print their login token (shown once)")
    p.add_argument("name")

    p = command("add-tasks", "create a task and its items")
    p.add_argument("--name", required=True, help="task name (unique)")
    p.add_argument("--kind", choices=TASK_KINDS, required=True)
    p.add_argument("--prompts", help="prompt file (.jsonl/.json/.parquet/save_to_disk dir) to sample replies for")
    p.add_argument("--model", action="append", default=[],
                   help="model to sample from (NAME=PATH or PATH; a checkpoint works); twice to compare two models")
    p.add_argument("--from-run", help="a run's samples.jsonl (or its logs dir): items from logged samples")
    p.add_argument("--steps", help="with --from-run: only these steps, e.g. 10,20")
    p.add_argument("--samples", type=int, default=1, help="items per prompt and model (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="rollout engine that samples")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="sampling seed and agreement-set draw")
    p.add_argument("--raters-per-item", type=int, default=1, help="distinct raters per item")
    p.add_argument("--agreement-items", type=int, default=0, help="items every rater gets (agreement set)")
    p.add_argument("--agreement-repeats", type=int, default=1, help="times each rater sees an agreement item")
    p.add_argument("--instructions", default="", help="shown to raters above each item")
    p.add_argument("--system", default=None, help="chat tasks: the system message")
    p.add_argument("--append", action="store_true", help="add items to an existing task of this name")

    p = command("export", "write preference pairs (for rayppo rm) or a reward file")
    p.add_argument("what", choices=("pairs", "rewards"))
    p.add_argument("--out", required=True, help=".jsonl, .json or .parquet file")
    p.add_argument("--task", action="append", default=[], help="task name or id (repeatable; default: all)")

    p = command("stats", "counts per rater, agreement (Cohen's kappa), win rates with 95%% intervals")
    p.add_argument("--task", action="append", default=[], help="task name or id (repeatable; default: all)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the numbers to this JSON file")


def run(args) -> None:
    handler = {"serve": _serve, "add-rater": _add_rater, "add-tasks": _add_tasks, "export": _export,
               "stats": _stats}[args.feedback_command]
    handler(args)


def _serve(args) -> None:
    from pipeline.feedback.server import serve

    print(f"feedback: serving {args.db} on http://{args.host}:{args.port}")
    serve(args.db, args.host, args.port, args.workers, args.chat_engine, args.trust_remote_code)


def _add_rater(args) -> None:
    from pipeline.feedback.storage import Database, add_rater

    token = add_rater(Database(args.db), args.name)
    print(f"rater {args.name!r} added; their login token (shown once):\n{token}")


def _add_tasks(args) -> None:
    from pipeline.feedback import rating_tasks
    from pipeline.feedback.storage import Database

    items = _new_items(args)
    db = Database(args.db)
    settings = None
    chat_model = None
    if args.kind == "chat":
        chat_model = rating_tasks.parse_model(args.model[0])[1]
        settings = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens,
                    "seed": args.seed, "system": args.system}
    task_id = rating_tasks.create_task(db, args.name, args.kind, instructions=args.instructions,
                                raters_per_item=args.raters_per_item, chat_model=chat_model, settings=settings,
                                append=args.append)
    added = rating_tasks.add_items(db, task_id, items, agreement_items=args.agreement_items,
                            agreement_repeats=args.agreement_repeats, seed=args.seed) if items else 0
    print(f"task {task_id} {args.name!r} ({args.kind}): {added} items added")


def _new_items(args) -> list:
    """The items of an ``add-tasks`` call, every argument checked before any engine starts."""
    from pipeline.feedback import rating_tasks

    sources = [bool(args.prompts), bool(args.from_run)]
    if args.kind == "chat":
        if len(args.model) != 1 or any(sources):
            raise ValueError("a chat task takes exactly one --model and no --prompts / --from-run")
        rating_tasks.parse_model(args.model[0])
        return []
    if sum(sources) != 1:
        raise ValueError("give either --prompts FILE with --model, or --from-run SAMPLES")
    if args.from_run:
        steps = {int(x) for x in args.steps.split(",")} if args.steps else None
        items = rating_tasks.items_from_samples(args.from_run, args.kind, label=os.path.basename(os.path.normpath(args.from_run)),
                                         steps=steps)
    else:
        if not args.model:
            raise ValueError("--prompts needs --model (once, or twice to compare two models)")
        plan = rating_tasks.SamplingPlan(args.engine, args.temperature, args.top_p, args.max_tokens, args.seed)
        items = rating_tasks.items_from_models(args.prompts, args.model, args.kind, plan, samples=args.samples,
                                        limit=args.limit)
    if not items:
        raise ValueError("no items came out of that source")
    return items


def _export(args) -> None:
    from pipeline.feedback.export import export
    from pipeline.feedback.storage import Database

    path, counts = export(Database(args.db, create=False), args.what, args.out, args.task)
    print(f"export: wrote {path} (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")")


def _stats(args) -> None:
    from pipeline.feedback.stats import format_report, report
    from pipeline.feedback.storage import Database

    data = report(Database(args.db, create=False), args.task)
    print(format_report(data))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(_finite(data), f, indent=1, allow_nan=False)


def _finite(value):
    """JSON has no NaN: an undefined statistic (kappa of one label, no ratings) is null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
