"""Learning guard of ``make multiturn``: the recipe's SFT on scripted memory dialogues, then a
few multi-turn GRPO steps against the scripted user, must raise held-out success.

Sized for CI from ``configs/multiturn.yaml``: the recipe's SFT stage as it is (on one rank,
which ``test_rank_invariance`` pins to two), then fewer RL steps on fewer held-out dialogues. The SFT model recalls a fact asked right after it
and forgets it three turns later, as its demonstrations mostly do; RL on the last turn's recall
reward, passed back whole to the earlier turns, must teach it to keep the fact.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.test_rl_pipeline import read_metrics, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIN_GAIN = 0.2
"""Rise in overall held-out success the guard asks of the few RL steps (the recipe asks the same
of its 30)."""


def test_multiturn_recipe_sft_then_rl_raises_held_out_success(ray_session, tmp_path):
    from pipeline.config import load_config
    from pipeline.stages.init_model import init_model
    from pipeline.stages.sft import run_sft

    cfg = load_config(os.path.join(REPO, "configs", "multiturn.yaml"), [
        f"init.output_dir={tmp_path}/base", f"sft.base_path={tmp_path}/base", f"sft.output_dir={tmp_path}/sft",
        "sft.num_workers=1", f"model.path={tmp_path}/sft", f"checkpoint.dir={tmp_path}/checkpoints", "checkpoint.every_steps=0",
        f"checkpoint.export_dir={tmp_path}/policy", f"logging.dir={tmp_path}/logs",
        "logging.wandb_mode=disabled", "logging.progress_bar=false",
        "total_steps=8", "eval_every=8", "data.num_eval=48",
    ])
    init_model(cfg.init, cfg.data)
    run_sft(cfg)
    run(cfg)
    metrics = read_metrics(tmp_path)
    before, after = metrics[0]["eval/success"], metrics[8]["eval/success"]
    # The SFT model keeps a fact across one turn and loses it across three.
    assert metrics[0]["eval/success/distance_1"] >= 0.8, metrics[0]
    assert metrics[0]["eval/success/distance_3"] <= 0.3, metrics[0]
    assert after - before >= MIN_GAIN, f"held-out success {before:.3f} -> {after:.3f}"
    assert metrics[8]["env/unscorable"] == 0.0
