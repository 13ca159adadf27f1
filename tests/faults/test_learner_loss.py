"""A learner rank killed (SIGKILL of its actor process) mid-update: the run restarts the whole
learner group from its last committed checkpoint by itself and ends where an unbroken run
ends."""

from __future__ import annotations

import os

import pytest

from pipeline.infra import fault_injection
from tests.faults.conftest import RUN_OVERRIDES, STEPS, logged_steps, max_weight_difference, run_to_end

pytestmark = pytest.mark.integration


def test_killed_learner_rank_recovers_from_the_last_checkpoint(tiny_model, ray_session, tmp_path, tiny_config,
                                                               fault_dir, reference_run):
    # Rank 1 dies entering the last step's update (step STEPS - 1 committed) while rank 0 waits
    # for it in the update's collectives.
    fault_injection.arm(fault_dir, "learner.update", rank=1, optimizer_steps=STEPS - 1)
    run_to_end(tiny_config(tiny_model, str(tmp_path), *RUN_OVERRIDES))
    assert fault_injection.fired(fault_dir, "learner.update")

    rows = logged_steps(os.path.join(tmp_path, "logs"))
    assert [r["step"] for r in rows] == list(range(STEPS + 1))  # no step missing or logged twice
    assert rows[-1]["faults/learner_restarts"] == 1
    assert rows[STEPS - 1]["faults/learner_restarts"] == 0
    reference = logged_steps(os.path.join(reference_run, "logs"))
    for step in range(1, STEPS + 1):
        assert rows[step]["reward/mean"] == reference[step]["reward/mean"], step
        assert rows[step]["actor/pg_loss"] == pytest.approx(reference[step]["actor/pg_loss"], rel=1e-5, abs=1e-7)
    assert max_weight_difference(os.path.join(tmp_path, "policy"), os.path.join(reference_run, "policy")) <= 1e-6
