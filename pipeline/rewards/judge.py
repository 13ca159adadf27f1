"""``kind: judge``: an LLM judge on a generation-engine actor of its own, pointwise or pairwise.

The work (template rendering, generation, score parsing) is
:class:`rollout_workers.judge.LLMJudge`; this module loads the template, checks the settings
before anything starts, and builds each sample's placeholder values.
"""

from __future__ import annotations

import os

from pipeline.rewards.actors import ActorSource, fill_scores
from pipeline.rewards.base import ResultBuilder, ScoreRequest

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def builtin_templates() -> list[str]:
    return sorted(f[:-4] for f in os.listdir(TEMPLATE_DIR) if f.endswith(".txt"))


def template_path(template: str, mode: str) -> str:
    """The file a ``template`` setting names: a built-in name, or a path."""
    name = template or mode
    if name in builtin_templates():
        return os.path.join(TEMPLATE_DIR, f"{name}.txt")
    return os.path.expanduser(name)


def load_template(spec, index: int) -> str:
    """The template text, checked to carry the placeholders its mode needs."""
    where = f"reward.sources[{index}].template (source {spec.name!r})"
    path = template_path(spec.template, spec.mode)
    if not os.path.isfile(path):
        raise ValueError(
            f"{where}: {spec.template!r} is neither a built-in template "
            f"({', '.join(builtin_templates())}) nor a file"
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    needed = ("{completion}",) if spec.mode == "pointwise" else ("{response_a}", "{response_b}")
    missing = [p for p in needed if p not in text]
    if missing:
        raise ValueError(f"{where}: {path} lacks {', '.join(missing)}, which {spec.mode} judging needs")
    return text


def conversation_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


class JudgeSource(ActorSource):
    def __init__(self, spec, template: str):
        super().__init__(spec)
        self.template = template

    def actor_target(self):
        from rollout_workers.judge import LLMJudge

        s = self.spec
        return LLMJudge, (s.path, self.template), dict(
            mode=s.mode, score_min=s.score_min, score_max=s.score_max, normalize=s.normalize, verdict=s.verdict,
            engine=s.engine, max_tokens=s.max_tokens, temperature=s.temperature, seed=s.seed,
            max_model_len=s.max_model_len, dtype=s.dtype, trust_remote_code=s.trust_remote_code,
            kv_cache_gib=s.kv_cache_gib, gpu_memory_utilization=s.gpu_memory_utilization,
            torch_threads=s.torch_threads,
        )

    def _other(self, request: ScoreRequest, i: int) -> tuple[str | None, str]:
        """The reply a pairwise judge compares with, or None and the reason there is none."""
        if self.spec.against == "reference":
            refs = request.references[i]
            return (refs[0], "") if refs else (None, "no_reference")
        other = request.metadata[i].get(self.spec.baseline_key)
        return (other, "") if isinstance(other, str) else (None, "no_baseline")

    def payload(self, request: ScoreRequest, builder: ResultBuilder):
        samples, items = [], []
        for i, (messages, completion) in enumerate(zip(request.messages, request.completions)):
            refs = request.references[i]
            item = {
                "conversation": conversation_text(messages),
                "prompt": request.prompts[i],
                "completion": completion,
                "reference": refs[0] if refs else "",
            }
            if self.spec.mode == "pairwise":
                other, reason = self._other(request, i)
                if other is None:
                    builder.fail(i, reason, f"has no {'reference reply' if reason == 'no_reference' else 'baseline reply'} to compare with")
                    continue
                item.update(response_a=completion, response_b=other)
            samples.append(i)
            items.append(item)
        return samples, items

    def call_args(self, items: list[dict], positions: list[int]) -> tuple:
        return [items[p] for p in positions], self.spec.swap

    def apply(self, builder: ResultBuilder, samples: list[int], result: dict) -> float:
        fill_scores(builder, samples, result["scores"], result["reasons"], what="judge reply: ")
        return float(result.get("seconds", 0.0))
