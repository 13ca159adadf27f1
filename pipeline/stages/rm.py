"""``rayppo rm``: train a reward model on preference pairs.

The driver loads, checks and tokenizes every pair before Ray starts (a bad row fails with its
file, row and field), then runs a Ray Train ``TorchTrainer`` whose workers are FSDP2 ranks
(:mod:`learners.reward_trainer`), as ``rayppo sft`` does. The result is an HF directory that
``transformers`` loads as it is (``AutoModelForSequenceClassification``), with
``reward_stats.json`` beside the weights, and the ``model`` reward source serves it.
"""

from __future__ import annotations

import json
import os

from pipeline import tasks
from pipeline.config import RayppoConfig
from pipeline.data.preferences import PreferencePair, load_pairs, reward_input_ids
from pipeline.infra.tracking import format_table


def load_pair_splits(cfg: RayppoConfig) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training and held-out pairs: ``rm.train_files`` / ``rm.eval_files``, or the task's own
    (``Task.preference_pairs``: the support task's)."""
    rc = cfg.rm
    task = tasks.get(cfg.data.task) if cfg.data.task is not None else None
    if not rc.train_files and (task is None or task.preference_pairs is None):
        with_pairs = [name for name, t in tasks.REGISTRY.items() if t.preference_pairs is not None]
        raise ValueError(
            f"rm.train_files: empty, and data.task is not {' or '.join(map(repr, with_pairs))} "
            "(the task that generates pairs)"
        )
    keys = (rc.prompt_key, rc.chosen_key, rc.rejected_key, rc.margin_key, rc.group_key)

    def from_files(paths: list[str]) -> list[PreferencePair]:
        return [pair for path in paths for pair in load_pairs(path, *keys)]

    train = from_files(rc.train_files)[: rc.num_pairs] if rc.train_files else task.preference_pairs(cfg, "train")
    if rc.eval_files:
        held_out = from_files(rc.eval_files)
    else:
        held_out = [] if rc.train_files else task.preference_pairs(cfg, "eval")
    return train, held_out


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_length: int) -> tuple[list[tuple], int]:
    """``(chosen ids, rejected ids, margin, group)`` per pair, each side cut to its last
    ``max_length`` tokens; and how many sides were cut."""
    encoded, cut = [], 0
    for pair in pairs:
        try:
            sides = [reward_input_ids(tokenizer, pair.prompt, reply) for reply in (pair.chosen, pair.rejected)]
        except Exception as err:  # a chat template may raise anything (jinja errors, bad roles)
            raise ValueError(f"{pair.source}: cannot render with the chat template: {err}") from None
        cut += sum(len(s) > max_length for s in sides)
        encoded.append((sides[0][-max_length:], sides[1][-max_length:], pair.margin, pair.group))
    return encoded, cut


def prepare(cfg: RayppoConfig) -> tuple[list[tuple], list[tuple], int]:
    """Everything checked before Ray starts: (train pairs, held-out pairs, pad id)."""
    from transformers import AutoTokenizer

    from learners.models import model_dir_error

    rc = cfg.rm
    field = "rm.base_path" if rc.base_path else "rm.base_path (default: sft.output_dir)"
    rc.base_path = rc.base_path or cfg.sft.output_dir
    problem = model_dir_error(rc.base_path)
    if problem:
        raise ValueError(f"{field}: {problem}")
    from pipeline.controller import preflight

    preflight.model_config(rc.base_path, field)  # config.json parses
    preflight.check_output_dir(rc.output_dir, "rm.output_dir")
    if rc.batch_size % rc.num_workers:
        raise ValueError(f"rm.batch_size={rc.batch_size} must be divisible by rm.num_workers={rc.num_workers}")
    train_pairs, eval_pairs = load_pair_splits(cfg)
    if not train_pairs:
        raise ValueError("rm: there are no training pairs")
    tokenizer = AutoTokenizer.from_pretrained(rc.base_path, trust_remote_code=cfg.model.trust_remote_code)
    if not tokenizer.chat_template:
        raise ValueError(f"{field}: the tokenizer of {rc.base_path!r} has no chat template to render pairs with")
    train, cut = encode_pairs(tokenizer, train_pairs, rc.max_length)
    held_out, eval_cut = encode_pairs(tokenizer, eval_pairs, rc.max_length)
    if cut or eval_cut:
        print(f"rm: {cut} training and {eval_cut} held-out replies kept only their last rm.max_length={rc.max_length} tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(f"{field}: the tokenizer of {rc.base_path!r} has neither a pad nor an eos token")
    return train, held_out, int(pad_id)


def run_rm(cfg: RayppoConfig) -> str:
    """Train and save ``rm.output_dir``; returns its path."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.controller.ray_setup import init_ray

    rc = cfg.rm
    train, held_out, pad_id = prepare(cfg)
    # Ray Train workers run in directories of their own: hand them absolute paths.
    rc.base_path = os.path.abspath(rc.base_path) if os.path.isdir(rc.base_path) else rc.base_path
    rc.output_dir = os.path.abspath(rc.output_dir)
    rc.log_dir = os.path.abspath(rc.log_dir)
    init_ray(cfg)
    use_gpu = cfg.resources.gpus_per_learner > 0
    from learners.reward_trainer import STATS_FILE, train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "train": train, "eval": held_out, "pad_id": pad_id, "tokenizer_path": rc.base_path},
        scaling_config=ScalingConfig(
            num_workers=rc.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.resources.cpus_per_learner, **({"GPU": cfg.resources.gpus_per_learner} if use_gpu else {})},
        ),
        run_config=RunConfig(name="rm", storage_path=os.path.join(os.path.dirname(rc.output_dir), "ray_results")),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    print(f"rm: wrote {rc.output_dir} ({len(train)} training pairs, {len(held_out)} held-out)")
    with open(os.path.join(rc.output_dir, STATS_FILE), encoding="utf-8") as f:
        print(stats_table(json.load(f)))
    return rc.output_dir


def stats_table(stats: dict) -> str:
    """The saved ``reward_stats.json`` as a table: the reward's mean/std, then held-out
    accuracy overall and per pair category."""
    rows = [("reward mean / std (training replies)", f"{stats['mean']:.4f} / {stats['std']:.4f}", str(stats["count"]))]
    held = stats.get("eval")
    if held:
        rows.append(("held-out pairwise accuracy", f"{held['pairwise_accuracy']:.3f}", str(held["pairs"])))
        rows.append(("held-out mean margin", f"{held['mean_margin']:.3f}", str(held["pairs"])))
        for group, g in sorted(held.get("by_group", {}).items()):
            rows.append((f"  accuracy on {group}", f"{g['pairwise_accuracy']:.3f}", str(g["pairs"])))
    return format_table(rows, ("reward model", "value", "n"))
