"""The data the runs read and write: prompt rows (:mod:`pipeline.data.rows`), messages,
conversations for SFT and preference pairs for the reward model. Knows no task by name."""

from pipeline.data.rows import (
    PromptRow,
    PromptStream,
    encode_prompts,
    load_prompt_files,
    load_rows,
    read_records,
    task_prompt_rows,
    token_ids,
)

__all__ = [
    "PromptRow", "PromptStream", "encode_prompts", "load_prompt_files", "load_rows", "read_records",
    "task_prompt_rows", "token_ids",
]
