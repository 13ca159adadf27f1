"""Batches generated ahead of training survive a checkpoint exactly."""

import json

import pytest

from pipeline.controller.inflight import InFlight, from_state, to_state
from pipeline.controller.sync import PendingCheck
from rollout_workers.types import RolloutBatch


def _batch() -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=[[5, 6], [5, 6]],
        response_ids=[[7, 8, 9], [10]],
        response_logprobs=[[-0.1234567890123, -2.5e-9, -13.0], [-0.3333333333333333]],
        finish_reasons=["length", "stop"],
        prompt_index=[0, 0],
        policy_version=3,
        probe_scores=[[[-1.0]]],
    )


def test_checkpoint_form_round_trips_through_json_exactly():
    entry = InFlight(step=4, rows=[17], batch=_batch(), metrics={"sync/probe_diff": 1e-7})
    restored = from_state(json.loads(json.dumps(to_state(entry))))
    assert (restored.step, restored.rows, restored.metrics) == (4, [17], {"sync/probe_diff": 1e-7})
    expected = _batch()
    expected.probe_scores = []  # settled before the save: nothing left to check
    assert restored.batch == expected
    assert restored.submitted is None and restored.check is None


@pytest.mark.parametrize("entry", [
    InFlight(step=1, rows=[0]),  # not generated yet
    InFlight(step=1, rows=[0], batch=_batch(), check=PendingCheck(0, [])),  # not checked yet
])
def test_only_collected_and_checked_batches_are_saved(entry):
    with pytest.raises(ValueError, match="step 1 must be collected and checked"):
        to_state(entry)
