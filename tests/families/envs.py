"""Environments of the model-family tests (named as ``env.class`` by import path)."""

from __future__ import annotations


class SystemNoteEnv:
    """Answers each reply with a system message: a role Gemma-3's template only accepts first."""

    def reset(self, row, seed):
        return [{"role": "user", "content": row.messages[-1]["content"]}]

    def step(self, messages, reply):
        if len(messages) >= 3:
            return None, 0.0, True, {}
        return {"role": "system", "content": "Answer with digits only."}, 0.0, False, {}
