"""``logging.sample_every``: a training run's samples, written to ``{logging.dir}/samples.jsonl``.

Every ``sample_every`` steps the first ``sample_prompts`` prompts of the batch are written with
all of their samples, one line per sample::

    {"step": 4, "group": 0, "sample": 1, "prompt": [{"role": "user", "content": "..."}],
     "completion": "...", "reward": 0.5, "finish_reason": "stop"}

``prompt`` is the conversation before the reply (in a multi-turn run, before the final reply).
``group`` numbers the prompts of that step, so the samples of one prompt can be paired
(``rayppo feedback add-tasks --from-run``). ``reward`` is ``null`` for an unscorable sample.
A resumed run first drops the lines of the steps it is about to repeat.
"""

from __future__ import annotations

import json
import math
import os

FILE_NAME = "samples.jsonl"


class SampleLog:
    def __init__(self, log_dir: str, every: int, prompts: int, start_step: int = 0):
        """``start_step``: steps already completed (a resumed run's); later steps' lines go."""
        self.every = every
        self.prompts = prompts
        self.path = os.path.join(log_dir, FILE_NAME)
        self.rewind(start_step)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def write(self, step: int, request, rollout, scores) -> None:
        """Log the samples of ``step`` (1-based, the step being completed) when it is due.
        ``request`` is the batch's :class:`pipeline.rewards.ScoreRequest`: per sample the
        conversation before the reply and the reply, as the reward sources saw them."""
        if not self.due(step) or len(request.completions) != len(rollout.prompt_index):
            return
        seen: dict[int, int] = {}
        lines = []
        for j, group in enumerate(rollout.prompt_index):
            if group >= self.prompts:
                continue
            seen[group] = seen.get(group, -1) + 1
            reward = float(scores[j])
            lines.append(json.dumps({
                "step": step, "group": group, "sample": seen[group], "prompt": request.messages[j],
                "completion": request.completions[j], "reward": reward if math.isfinite(reward) else None,
                "finish_reason": rollout.finish_reasons[j] if j < len(rollout.finish_reasons) else None,
            }, ensure_ascii=False) + "\n")
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)

    def rewind(self, completed_steps: int) -> None:
        """Drop the lines of steps after ``completed_steps`` (they are about to run again)."""
        if self.every <= 0 or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", completed_steps + 1) <= completed_steps:
                        kept.append(line)
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line cut short by the crash being resumed from
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)
