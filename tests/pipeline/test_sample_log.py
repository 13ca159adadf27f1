"""``logging.sample_every``: which samples are written, and a resume drops the repeated steps."""

from __future__ import annotations

import json

import numpy as np

from pipeline.feedback.rating_tasks import items_from_samples
from pipeline.infra.sample_log import SampleLog
from pipeline.rewards import ScoreRequest
from rollout_workers.types import RolloutBatch


def _batch(step: int) -> tuple[ScoreRequest, RolloutBatch, np.ndarray]:
    prompt_index = [0, 0, 1, 1, 2, 2]
    request = ScoreRequest(
        messages=[[{"role": "user", "content": f"q{i}"}] for i in prompt_index],
        completions=[f"s{step} reply {j}" for j in range(6)],
        references=[[] for _ in prompt_index], answers=[None] * 6, metadata=[{} for _ in prompt_index],
    )
    rollout = RolloutBatch(prompt_ids=[[1]] * 6, response_ids=[[2]] * 6, response_logprobs=[[0.0]] * 6,
                           finish_reasons=["stop"] * 6, prompt_index=prompt_index)
    return request, rollout, np.array([0.5, np.nan, 1.0, 0.0, 0.2, 0.3])


def test_due_steps_write_the_first_prompts_with_all_their_samples(tmp_path):
    log = SampleLog(str(tmp_path), every=2, prompts=2)
    for step in (1, 2, 3, 4):
        log.write(step, *_batch(step))
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["group"], r["sample"]) for r in rows] == [
        (s, g, k) for s in (2, 4) for g in (0, 1) for k in (0, 1)]
    assert rows[1]["reward"] is None and rows[0]["reward"] == 0.5
    assert rows[0]["prompt"] == [{"role": "user", "content": "q0"}] and rows[0]["completion"] == "s2 reply 0"

    items = items_from_samples(str(tmp_path), "compare", label="run")
    assert len(items) == 4 and items[0].reply_a == "s2 reply 0" and items[0].reply_b == "s2 reply 1"
    assert items[0].model_a == items[0].model_b == "run@step2"
    assert len(items_from_samples(str(tmp_path / "samples.jsonl"), "rate", steps={4})) == 4

    SampleLog(str(tmp_path), every=2, prompts=2, start_step=3)  # resumed after step 3
    assert {json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()} == {2}
    SampleLog(str(tmp_path), every=2, prompts=2)  # a fresh run starts a fresh file
    assert (tmp_path / "samples.jsonl").read_text() == ""


def test_off_by_default_writes_nothing(tmp_path):
    log = SampleLog(str(tmp_path), every=0, prompts=4)
    log.write(1, *_batch(1))
    assert not (tmp_path / "samples.jsonl").exists()
