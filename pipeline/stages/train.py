"""The RL driver: one step = generate -> reward -> logprobs/values -> advantages -> update ->
weight sync, each phase inside a named timer whose name is its metric key (``time/<phase>``).

The driver owns nothing heavy: engines live in :mod:`rollout_workers`, models and optimizers in
:mod:`learners`. Everything that can be checked is checked in ``__init__``, before Ray starts.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import Callable, Optional

import numpy as np

from learners import checkpoint
from learners.batching import Samples
from learners.group import LearnerGroup
from learners.models import model_dir_error
from pipeline import data, tasks
from pipeline.config import RayppoConfig, config_hash, resolve_storage, save_config
from pipeline.data.templates import check_chat_template
from pipeline.controller import advantages, episodes, preflight
from pipeline.controller.inflight import InFlight, from_state, to_state
from pipeline.controller.monitors import Monitors
from pipeline.controller.placement import Placement, write_report
from pipeline.controller.recovery import Recovery
from pipeline.controller.sync import PendingCheck, ProbeBatch, WeightSyncError, make_probe, settle, sync, verify_engine
from pipeline.infra import fault_injection
from pipeline.infra.sample_log import SampleLog
from pipeline.infra.tracking import MetricsLogger, PhaseTimers, format_table, plot_curves
from pipeline.rewards import UnscorableSteps
from rollout_workers.group import RolloutGroup
from rollout_workers.types import RolloutBatch, Sampling

StepCallback = Callable[[int, dict[str, float], Optional[str]], None]


def merge_checks(step_metrics: dict[str, float], eval_metrics: dict[str, float]) -> dict[str, float]:
    """A step's metrics with its evaluation's. Both may carry a settled probe check (the step's
    generate checks the previous sync, the evaluation this step's): the worst difference and the
    total wait are kept, so no check is lost from the log."""
    merged = {**step_metrics, **eval_metrics}
    for key, combine in (("sync/probe_diff", max), ("sync/check_seconds", lambda a, b: a + b)):
        if key in step_metrics and key in eval_metrics:
            merged[key] = combine(step_metrics[key], eval_metrics[key])
    return merged


class Trainer:
    def __init__(self, cfg: RayppoConfig):
        self.cfg = resolve_storage(cfg)
        preflight.check_train(cfg)  # model config, context, output paths: before anything loads
        problem = model_dir_error(cfg.model.path)
        if problem:
            raise ValueError(f"model.path: {problem}")
        self.tokenizer = preflight.load_tokenizer(cfg.model.path, "model.path", cfg.model.trust_remote_code)
        self.rewards = episodes.reward_set(cfg, self.tokenizer)  # checked here; actors start in setup()
        self.train_rows, self.eval_rows = tasks.prompt_splits(cfg.data)
        # The template renders the run's prompts (a system message Gemma-3 cannot place fails here).
        check_chat_template(
            self.tokenizer, f"model.path={cfg.model.path!r}",
            tuple(r.messages for r in self.train_rows[:1] + self.eval_rows[:1]),
        )
        # Single replies or conversations; an environment and its chat template are checked here.
        self.episodes = episodes.build(cfg, self.tokenizer, self.train_rows)
        max_tokens = cfg.data.max_prompt_tokens
        self.train_ids = data.encode_prompts(self.tokenizer, self.train_rows, max_tokens)
        self.eval_ids = data.encode_prompts(self.tokenizer, self.eval_rows, max_tokens)
        self.stream = data.PromptStream(len(self.train_rows), cfg.prompts_per_step, cfg.seed)
        self.probe: ProbeBatch = make_probe(
            self.tokenizer,
            self.eval_ids,
            [r.answer for r in self.eval_rows],
            cfg.rollout.probe_size,
            max_tokens=cfg.rollout.max_tokens,
        )
        self.resume_dir = (
            checkpoint.resolve(cfg.checkpoint.dir, cfg.checkpoint.resume) if cfg.checkpoint.resume else None
        )
        self.last_committed = self.resume_dir  # what a learner-group restart goes back to
        self.stream_start = self.stream.state_dict()  # ... when there is no checkpoint yet
        self.recovery = Recovery(self)
        self.timers = PhaseTimers()
        self.unscorable_steps = UnscorableSteps(cfg.reward.max_unscorable_steps)
        self.pending_check: Optional[PendingCheck] = None
        self.inflight: deque[InFlight] = deque()
        self.step_index = 0
        self.version = 0
        self.history: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Start every role and make the first verified sync. A failure part-way shuts down
        what had started (actors, then the placement group), so a long-lived Ray session (a
        Tune trial, a notebook, a test run) gets its resources back."""
        try:
            self._setup()
        except BaseException:
            self.shutdown()
            raise

    def _setup(self) -> None:
        from pipeline.controller.ray_setup import init_ray

        cfg = self.cfg
        init_ray(cfg)
        self.placement = Placement.create(cfg)  # fails fast when the cluster cannot hold the run
        if self.rewards is not None:
            self.rewards.launch(self.placement)  # reward models load while the other roles start
        self.learners = LearnerGroup(cfg, self.placement)
        self.rollouts = RolloutGroup(cfg, cfg.model.path, self.placement)
        self.rollouts.pool.verify_replacement = self._verify_engine
        if self.rewards is not None:
            self.rewards.wait_ready()
        self.episodes.start(self.placement)  # an environment's services (an LLM user's engine)
        self._write_placement()
        if self.resume_dir:
            self.learners.load(self.resume_dir)
        self._restore(self.resume_dir)
        if self.resume_dir:
            print(f"resuming from {self.resume_dir} at step {self.step_index} "
                  f"(checkpoint.resume={cfg.checkpoint.resume})", flush=True)
        os.makedirs(cfg.logging.dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.logging.dir, "config.yaml"))
        self.logger = MetricsLogger(
            cfg.logging.dir,
            cfg.run_name,
            cfg.to_dict(),
            cfg.total_steps,
            wandb_mode=cfg.logging.wandb_mode,
            wandb_project=cfg.logging.wandb_project,
            progress_bar=cfg.logging.progress_bar,
            resume=self.resume_dir is not None,
            wandb_group=cfg.logging.wandb_group,
        )
        self.monitors = Monitors(cfg.monitors, self.logger, cfg.logging.dir)
        self.sample_log = SampleLog(cfg.logging.dir, cfg.logging.sample_every, cfg.logging.sample_prompts,
                                    self.step_index)
        # Engines start from model.path; after a resume the learner holds newer weights. This
        # first verified sync makes the very first generation use the learner's policy.
        with self.recovery.guard():  # a restart does this sync itself
            self.startup_sync = self._sync(check=True)

    def _write_placement(self) -> None:
        write_report(
            os.path.join(self.cfg.logging.dir, "placement.json"),
            self.placement, self.learners.workers, self.rollouts.workers,
            self.rewards.actors() if self.rewards is not None else {},
        )

    def _restore(self, resume_dir: Optional[str]) -> None:
        """The driver's state of checkpoint ``resume_dir``, or of a fresh run for ``None``
        (the learners have loaded the checkpoint already)."""
        cfg = self.cfg
        self.inflight.clear()
        self.pending_check = None
        self.unscorable_steps.reset()  # counted in this process, from the step restored on
        if resume_dir is None:
            self.step_index, self.version, self.history = 0, 0, {}
            self.stream.load_state_dict(self.stream_start)
        else:
            state = checkpoint.read_state(resume_dir)
            self.step_index = state["step"]
            self.version = state["policy_version"]
            self.stream.load_state_dict(state["data"])
            self.history = state.get("history", {})
            if state.get("config_hash") != config_hash(cfg):
                print(f"note: resuming {resume_dir} with a changed config")
            saved = state.get("inflight", [])
            keep = saved[: cfg.rollout.max_staleness]
            if len(saved) > len(keep):
                print(f"note: rollout.max_staleness={cfg.rollout.max_staleness} drops "
                      f"{len(saved) - len(keep)} batch(es) generated ahead before the checkpoint")
            self.inflight.extend(from_state(entry) for entry in keep)

    def restart_learners(self) -> Optional[str]:
        """A new learner group from the last committed checkpoint (or the start of the run);
        the engines get its weights. Returns the checkpoint restarted from."""
        self.learners.kill()
        self.learners = LearnerGroup(self.cfg, self.placement)
        if self.last_committed:
            self.learners.load(self.last_committed)
        self._restore(self.last_committed)
        self.timers.pop()  # the lost attempt's partial phase times
        self.logger.rewind()
        self.sample_log.rewind(self.step_index)
        self.startup_sync = self._sync(check=True)  # also replaces engines lost with a node
        self._write_placement()
        return self.last_committed

    def _verify_engine(self, engine) -> None:
        """Probe check of a replaced engine (it loaded the weights last pushed)."""
        res = self.cfg.resources
        verify_engine(self.learners, engine, self.probe, self.cfg.rollout.probe_tolerance, self.version,
                      res.engine_timeout_s)

    def fault_metrics(self) -> dict[str, float]:
        """Faults recovered so far in this driver process (``faults/*``)."""
        sources = self.rewards.sources if self.rewards is not None else []
        reward_restarts = sum(getattr(source, "restarts", 0) for source in sources)
        return {**self.rollouts.fault_metrics(), **self.recovery.metrics(),
                "faults/reward_restarts": float(reward_restarts)}

    # -------------------------------------------------------------------- step
    def step(self) -> dict[str, float]:
        t = self.timers
        with t.phase("generate"):
            self._submit_ahead()
            entry, probe_metrics = self._next_batch()
            rollout = entry.batch
        # Reward sources score while the learners compute reference logprobs and values (no
        # input of theirs depends on the scores): "reward" times only the submit and the wait.
        with t.phase("reward"):
            request = self.episodes.score_request(rollout, [self.train_rows[i] for i in entry.rows])
            pending = self.rewards.submit(request) if self.rewards is not None else None
        samples = Samples(rollout.prompt_ids, rollout.response_ids, {})
        with t.phase("logprobs"):
            computed = self.learners.compute(samples, need_old_logprobs=self._needs_old_logprobs())
        with t.phase("reward"):
            scores, reward_metrics = self.episodes.collect(rollout, self.rewards, pending)
        self.sample_log.write(self.step_index + 1, request, rollout, scores)
        # A step with no scorable sample has nothing to update on; reward.max_unscorable_steps
        # of them in a row end the run here, before the update, naming each failing source.
        self.unscorable_steps.update(scores, lambda: self._unscorable_causes(rollout))
        with t.phase("advantages"):
            extras, adv_metrics = advantages.compute(self.cfg, rollout, scores, computed)
        with t.phase("update"):
            scorable = [i for i in range(len(rollout)) if np.isfinite(scores[i])]
            batch = Samples(rollout.prompt_ids, rollout.response_ids, extras, rollout.loss_masks or None).subset(scorable)
            update_metrics = self.learners.update(batch)
        self.step_index += 1
        with t.phase("sync"):
            sync_metrics = self._sync(check=self._verify_now())
        return {**probe_metrics, **reward_metrics, **adv_metrics, **update_metrics, **sync_metrics, **t.pop()}

    def _sampling(self) -> Sampling:
        rc = self.cfg.rollout
        return Sampling(
            n=rc.n_samples,
            temperature=rc.temperature,
            top_p=rc.top_p,
            max_tokens=rc.max_tokens,
            ignore_eos=rc.ignore_eos,
        )

    def _needs_old_logprobs(self) -> bool:
        if self.cfg.rollout.max_staleness > 0:
            return False  # the engines' logprobs are the behaviour policy's: those are the old ones
        lc = self.cfg.learner
        return lc.ppo_epochs * lc.mini_batches > 1 or (
            self.cfg.algorithm.kl_coef > 0 and self.cfg.algorithm.kl_mode == "reward"
        )

    def _verify_now(self) -> bool:
        every = self.cfg.rollout.verify_every
        return every > 0 and self.step_index % every == 0

    def _submit_ahead(self) -> None:
        """Keep ``rollout.max_staleness + 1`` training batches submitted: this step's, and the
        ones the engines generate while it trains. A batch carries the sync check that is due
        (its engines score the probe beside it) and is seeded by the step that trains on it."""
        while len(self.inflight) <= self.cfg.rollout.max_staleness:
            rows = self.stream.next_batch()
            step = self.step_index + len(self.inflight)
            prompt_rows = [self.train_rows[i] for i in rows]
            self.inflight.append(self._submit([self.train_ids[i] for i in rows], self._sampling(), step, rows, prompt_rows))

    def _submit(self, prompt_ids: list[list[int]], sampling: Sampling, step: int, rows: list[int],
                prompt_rows: list) -> InFlight:
        """Submit a generate that carries the sync check now due, if any (the engines score the
        probe beside the prompts). Multi-turn runs open a conversation on each of ``prompt_rows``."""
        check, self.pending_check = self.pending_check, None
        probe = self.probe if check is not None else None
        submitted = self.episodes.submit(self.rollouts, prompt_ids, prompt_rows, sampling, step, probe)
        return InFlight(step, rows, submitted, check)

    def _next_batch(self) -> tuple[InFlight, dict[str, float]]:
        """This step's batch, checked, with its check's metrics and its staleness."""
        entry = self._settle(self.inflight[0])
        self.inflight.popleft()
        staleness = entry.step - entry.batch.policy_version
        if not 0 <= staleness <= self.cfg.rollout.max_staleness:
            raise RuntimeError(
                f"step {entry.step} would train on a batch of policy version {entry.batch.policy_version}: "
                f"outside rollout.max_staleness={self.cfg.rollout.max_staleness}"
            )
        return entry, {**entry.metrics, "rollout/staleness": float(staleness)}

    def _generate(self, prompt_ids: list[list[int]], sampling: Sampling, step: int,
                  prompt_rows: Optional[list] = None) -> tuple[RolloutBatch, dict]:
        """Generate now (evaluation). Queued on the engines after any batch already in flight,
        and checked like a training batch when a sync check is due."""
        entry = self._settle(self._submit(prompt_ids, sampling, step, rows=[], prompt_rows=prompt_rows or []))
        return entry.batch, entry.metrics

    def _settle(self, entry: InFlight) -> InFlight:
        """Wait for ``entry``'s batch and settle its sync check: raises on a stale engine before
        any of its samples is used."""
        if entry.batch is None:
            entry.batch = self.rollouts.collect(entry.submitted)
            entry.submitted = None
        if entry.check is None:
            return entry
        engines = len(self.rollouts.workers)
        try:
            entry.metrics = settle(
                self.learners, entry.check, entry.batch.probe_scores, engines, self.cfg.rollout.probe_tolerance
            )
        except WeightSyncError:
            # Nothing sampled since is trained on, and the newest check stays due: every later
            # generate checks again until a new sync replaces it, so a caller that catches the
            # error cannot go on sampling from stale weights.
            checks = [e.check for e in (*self.inflight, entry) if e.check is not None]
            if self.pending_check is None:
                self.pending_check = max(checks, key=lambda c: c.version)
            self.inflight.clear()
            raise
        entry.check = None
        return entry

    def _sync(self, check: bool) -> dict[str, float]:
        self.version = self.step_index
        metrics, self.pending_check = sync(self.learners, self.rollouts, self.probe, self.version, check)
        return metrics

    def _unscorable_causes(self, rollout: RolloutBatch) -> list[str]:
        """Why the latest batch could not be scored: each failing source's reasons and first
        problem, and in multi-turn runs the environment's."""
        causes = self.rewards.problems() if self.rewards is not None else []
        return causes + self.episodes.problems(rollout)

    # -------------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, float]:
        """The held-out prompts, greedy: ``eval/accuracy`` and ``eval/reward/*`` of single
        replies, ``eval/success``, ``eval/return``, ... of conversations."""
        with self.timers.phase("eval"):
            rollout, probe_metrics = self._generate(self.eval_ids, self.episodes.eval_sampling(), 0, self.eval_rows)
            metrics = self.episodes.eval_metrics(rollout, self.eval_rows, self.rewards)
        return {**metrics, **probe_metrics, **self.timers.pop()}

    # -------------------------------------------------------------- train loop
    def train(self, on_step: Optional[StepCallback] = None) -> dict[str, float]:
        """Run to ``total_steps``. ``on_step(step, metrics, checkpoint_dir)`` is called after each
        step is logged and saved (``checkpoint_dir`` is ``None`` when the step saved nothing)."""
        cfg = self.cfg
        last: dict[str, float] = {}
        phase_totals: dict[str, float] = {}
        # A learner-group failure inside the body restarts the group from the last committed
        # checkpoint (pipeline.controller.recovery) and the loop goes on from the step restored.
        while self._eval_before_due() or (self.step_index < cfg.total_steps and not self.monitors.stopped):
            with self.recovery.guard():
                if self._eval_before_due():
                    before = self.evaluate()  # also settles the start-up sync's probe check
                    self.history["eval_before"] = self.episodes.headline(before)
                    self.logger.log(0, {**before, **self.startup_sync, **self.fault_metrics()})
                    self.monitors.check(0, before)  # the gold metric before any update
                    continue
                metrics = self.step()
                done = self.step_index >= cfg.total_steps
                if done or (cfg.eval_every and self.step_index % cfg.eval_every == 0):
                    metrics = merge_checks(metrics, self.evaluate())
                metrics.update(self.fault_metrics())
                self.logger.log(self.step_index, metrics)
                done = self.monitors.check(self.step_index, metrics) or done  # a stop saves, then ends
                for key, value in metrics.items():
                    if key.startswith("time/"):
                        phase_totals[key] = phase_totals.get(key, 0.0) + value
                last = {**last, **metrics}
                every = cfg.checkpoint.every_steps
                saved = self.save() if done or (every and self.step_index % every == 0) else None
                if on_step is not None:
                    on_step(self.step_index, metrics, saved)
        self.history["eval_after"] = self.episodes.headline(last)
        self.logger.close()
        if cfg.checkpoint.export_dir:
            self.export(cfg.checkpoint.export_dir)
        plot_curves(self.logger.path, os.path.join(cfg.logging.dir, "curves.png"))
        print(self.summary(last, phase_totals))
        return last

    def save(self) -> str:
        cfg = self.cfg
        os.makedirs(cfg.checkpoint.dir, exist_ok=True)
        # Batches generated ahead are saved as generated (and checked): the weights that
        # sampled them are not in the checkpoint, so a resume could not reproduce them.
        inflight = [to_state(self._settle(entry)) for entry in self.inflight]
        tmp = checkpoint.begin(cfg.checkpoint.dir, self.step_index)
        self.learners.save(tmp, cfg.model.path)
        fault_injection.point("driver.checkpoint", step=self.step_index)
        state = {
            "step": self.step_index,
            "policy_version": self.version,
            "data": self.stream.state_dict(),
            "config_hash": config_hash(cfg),
            "history": self.history,
            "inflight": inflight,
        }
        self.last_committed = checkpoint.commit(
            cfg.checkpoint.dir, self.step_index, tmp, state, cfg.checkpoint.keep_last
        )
        return self.last_committed

    def _eval_before_due(self) -> bool:
        """The evaluation before training (step 0) has not been logged by this run yet."""
        return self.step_index == 0 and "eval_before" not in self.history

    def export(self, out: str) -> str:
        """Copy the final checkpoint's policy (already an HF directory) to ``out``, atomically."""
        import shutil

        source = os.path.join(checkpoint.resolve(self.cfg.checkpoint.dir, "latest"), "policy")
        tmp = out.rstrip("/") + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        shutil.copytree(source, tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
        return out

    def summary(self, last: dict[str, float], phase_totals: dict[str, float]) -> str:
        steps = max(1, self.cfg.total_steps)
        what = self.episodes.headline_name
        rows = [
            (f"{what} before RL", f"{self.history.get('eval_before', float('nan')):.3f}"),
            (f"{what} after RL", f"{self.history.get('eval_after', float('nan')):.3f}"),
            ("reward (last step)", f"{last.get('reward/mean', float('nan')):.3f}"),
            ("KL to reference (last step)", f"{last.get('kl/mean', float('nan')):.4f}"),
        ]
        rows += [(f"{k[5:]} s/step", f"{v / steps:.3f}") for k, v in phase_totals.items()]
        return format_table(rows, ("metric", "value"))

    def shutdown(self) -> None:
        for part in ("rewards", "episodes", "rollouts", "learners"):
            handle: Optional[object] = getattr(self, part, None)
            if handle is not None:
                try:
                    handle.shutdown()
                except Exception as exc:  # noqa: BLE001 - the placement group is removed regardless
                    print(f"shutdown: {part}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        placement = getattr(self, "placement", None)
        if placement is not None:
            placement.remove()  # after the actors that lived in it
