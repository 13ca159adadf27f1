"""Single-turn episodes behind the interface the RL loop calls (multi-turn: test_multiturn_driver.py)."""

import numpy as np

from pipeline.config import load_config
from pipeline.controller import episodes
from pipeline.data import PromptRow
from rollout_workers.types import RolloutBatch


class _Tokenizer:
    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(ord("0") + t) for t in row) for row in ids]


class _Rewards:
    def collect(self, pending):
        return np.array([1.0, 0.0]), {"reward/mean": 0.5}


def _rows():
    return [PromptRow(messages=[{"role": "user", "content": "Compute 1+1."}], answer="2", source="r:1")]


def _batch():
    return RolloutBatch(prompt_ids=[[5], [5]], response_ids=[[2], [3]], response_logprobs=[[-0.1], [-0.2]],
                        finish_reasons=["stop", "length"], prompt_index=[0, 0])


def test_a_run_without_an_environment_has_single_turn_episodes():
    cfg = load_config(None, ["data.task=arithmetic"])
    single = episodes.build(cfg, _Tokenizer(), _rows())
    assert isinstance(single, episodes.SingleTurn) and single.headline_name == "eval accuracy"
    request = single.score_request(_batch(), _rows())
    assert request.completions == ["2", "3"] and request.answers == ["2", "2"]
    scores, metrics = single.collect(_batch(), _Rewards(), pending=None)
    assert scores.tolist() == [1.0, 0.0]
    assert metrics["response/length_mean"] == 1.0 and metrics["response/truncated_frac"] == 0.5
    assert single.problems(_batch()) == []
    assert single.eval_metrics(_batch(), _rows(), None) == {"eval/accuracy": 0.5}
    assert single.headline({"eval/accuracy": 0.5, "eval/reward/mean": 0.1}) == 0.5
    assert single.eval_sampling().temperature == 0.0 and single.eval_sampling().n == 1
