"""``support``: a support-assistant chat task scored by a hidden gold rule (the world is
:mod:`pipeline.envs.support`); its rows also carry ``references`` and ``metadata``. It has
every hook: SFT demonstrations, preference pairs for ``rayppo rm``, a tokenizer corpus."""

from __future__ import annotations

from pipeline.data.conversations import Conversation
from pipeline.data.preferences import PreferencePair
from pipeline.envs import support
from pipeline.tasks.base import Task, split_rows


def _sft_conversations(cfg, split: str) -> list[Conversation]:
    dc = cfg.data
    train, eval_ = split_rows(TASK, dc.num_train, dc.num_eval, dc.seed)
    rows = train[: cfg.sft.num_examples] if split == "train" else eval_
    # Demonstrations are drawn with their own seed: the prompts are the RL stage's, the
    # replies are what annotators wrote for them.
    convs = support.sft_conversations(rows, dc.seed + (1 if split == "train" else 2))
    return [Conversation(c["messages"], f"task support {split} #{i}") for i, c in enumerate(convs, 1)]


def _preference_pairs(cfg, split: str) -> list[PreferencePair]:
    dc, rc = cfg.data, cfg.rm
    train_rows, eval_rows = split_rows(TASK, dc.num_train, dc.num_eval, dc.seed)
    if split == "train":
        # More pairs than prompts: each prompt is compared again with other replies.
        def cycle(n: int) -> list[dict]:
            return [train_rows[i % len(train_rows)] for i in range(n)]

        raw = support.preference_pairs(cycle(rc.num_pairs), dc.seed + 3, label_noise=rc.label_noise)
        raw += support.contrast_pairs(cycle(round(rc.contrast_pairs * rc.num_pairs)), dc.seed + 5, rc.label_noise)
    else:
        raw = support.preference_pairs(eval_rows[: rc.num_eval_pairs], dc.seed + 4)
    return [
        PreferencePair(p["prompt"], p["chosen"], p["rejected"], 0.0, f"task support {split} pair #{i}", p["group"])
        for i, p in enumerate(raw, 1)
    ]


TASK = Task(
    "support",
    rows=lambda seed, min_digits, max_digits: support.iter_rows(seed),
    verify=lambda completion, answer, prompt: support.gold_score(prompt, completion, answer),
    sft_conversations=_sft_conversations,
    preference_pairs=_preference_pairs,
    # Replies of every quality, not only the answers: SFT and RL generate all of them.
    corpus=support.corpus_chats,
)
