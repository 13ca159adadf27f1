"""``memory``: the multi-turn memory task (the world is :mod:`pipeline.envs.memory`); its rows
open a dialogue that ``pipeline.envs.memory:MemoryEnv`` continues, and its prompt splits are
distinct dialogues, not distinct opening prompts."""

from __future__ import annotations

from pipeline.data.conversations import Conversation
from pipeline.envs import memory
from pipeline.tasks.base import Task


def _sft_conversations(cfg, split: str) -> list[Conversation]:
    # Scripted dialogues of mixed quality, several assistant turns.
    dc = cfg.data
    convs = memory.task_conversations(dc.num_train, dc.num_eval, dc.seed, cfg.sft.num_examples, split)
    return [Conversation(c["messages"], f"task memory {split} #{i}") for i, c in enumerate(convs, 1)]


TASK = Task(
    "memory",
    rows=lambda seed, min_digits, max_digits: memory.iter_rows(seed),
    verify=lambda completion, answer, prompt: memory.verify(completion, answer),
    prompt_splits=lambda data_cfg: memory.prompt_splits(data_cfg.num_train, data_cfg.num_eval, data_cfg.seed),
    sft_conversations=_sft_conversations,
    corpus=memory.corpus_texts,  # whole dialogues, every reply kind
)
