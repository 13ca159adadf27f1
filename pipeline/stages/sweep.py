"""``rayppo sweep``: a Ray Tune search in which every trial is a whole RL run.

A trial is one :class:`pipeline.stages.train.Trainer` (its own engines and learner group) inside one
placement group laid out by :func:`pipeline.controller.placement.trial_bundles`: bundle 0 runs the trial's
step loop, the others hold its learner ranks and engines, so trials never take each other's
resources. Each trial reports every step to Tune and attaches its committed checkpoint
(``step_N/``) whenever the trainer saves one; a trial that Tune restarts (PBT exploit, resumed
sweep, retried failure) copies the checkpoint it is given into its own checkpoint directory
and resumes from it, then checks that the learner holds exactly the weights of that
checkpoint and records the proof in its metrics (``restore/*``).

Layout under ``storage_path/<tune.name>/``: Tune's experiment state and trial directories
(results, Tune's checkpoint copies), ``runs/<trial_id>/`` (each trial's logs, checkpoints and
policy, plus ``starts.jsonl``: one line per start), ``results.txt`` and ``best_config.yaml``.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from learners import checkpoint
from pipeline.config import RayppoConfig, resolve_storage, save_config
from pipeline.config.search_space import apply_values, parse_space, pbt_mutations, tune_param_space
from pipeline.controller import preflight
from pipeline.infra.tracking import format_table
from pipeline.infra.weight_transport import unpack

DEFAULT_STORAGE = "runs/sweeps"


# ------------------------------------------------------------------------------------ paths


def sweep_name(cfg: RayppoConfig) -> str:
    return cfg.tune.name or cfg.run_name


def sweep_dir(cfg: RayppoConfig) -> str:
    """Absolute experiment directory: ``storage_path/<tune.name or run_name>``."""
    root = cfg.storage_path or DEFAULT_STORAGE
    if "://" in root:
        raise ValueError(
            f"storage_path: rayppo sweep needs a filesystem path (a shared mount on a cluster), got {root!r}"
        )
    return os.path.join(os.path.abspath(os.path.expanduser(root)), sweep_name(cfg))


def _absolute_inputs(cfg: RayppoConfig) -> RayppoConfig:
    """A copy whose local input paths are absolute: trials must not depend on a working dir."""
    out = copy.deepcopy(cfg)

    def fix(path: Optional[str]) -> Optional[str]:
        return os.path.abspath(path) if path and os.path.exists(path) else path

    out.model.path = fix(out.model.path)
    out.model.critic_path = fix(out.model.critic_path)
    out.data.train_files = [fix(p) for p in out.data.train_files]
    out.data.eval_files = [fix(p) for p in out.data.eval_files]
    return out


def trial_config(base: RayppoConfig, values: dict[str, Any], run_dir: str, group: str) -> RayppoConfig:
    """The run config of one trial: ``base`` with the sampled ``values``, its outputs under
    ``run_dir``, checkpoints at the cadence the scheduler needs, and the sweep's W&B group."""
    cfg = apply_values(base, values)
    cfg.storage_path = run_dir
    cfg.logging.dir = "logs"
    cfg.checkpoint.dir = "checkpoints"
    cfg.checkpoint.export_dir = "policy" if base.checkpoint.export_dir else None
    cfg.checkpoint.resume = None
    if cfg.tune.scheduler == "pbt":
        # PBT copies the checkpoint reported at a perturbation step: there must be one.
        cfg.checkpoint.every_steps = cfg.tune.perturbation_interval
    cfg.run_name = f"{group}-{os.path.basename(run_dir)}"
    cfg.logging.wandb_group = group
    cfg.logging.progress_bar = False
    return resolve_storage(cfg)


# ------------------------------------------------------------------------------- checksums


def policy_checksum(tensors: dict, keys: Iterable[str]) -> str:
    """16 hex chars of the SHA-256 of ``keys``' names, dtypes, shapes and bytes."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(keys):
        if key not in tensors:
            raise ValueError(f"policy weights lack tensor {key!r}")
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # A byte view: exact for every dtype, bfloat16 included (numpy has none).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_policy(step_dir: str) -> tuple[dict, str]:
    """Tensors of ``step_dir/policy/model.safetensors`` and their checksum."""
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(step_dir, "policy", "model.safetensors"))
    return tensors, policy_checksum(tensors, tensors)


# --------------------------------------------------------------------------- inside a trial


def restore_into(cfg: RayppoConfig, source) -> dict[str, Any]:
    """Copy Tune checkpoint ``source`` into ``cfg.checkpoint.dir`` as a committed step and point
    ``cfg.checkpoint.resume`` at it; returns what was restored (``restore/*`` metrics)."""
    with source.as_directory() as src:
        state = checkpoint.read_state(src)
        step = int(state["step"])
        os.makedirs(cfg.checkpoint.dir, exist_ok=True)
        tmp = checkpoint.begin(cfg.checkpoint.dir, step)
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    final = checkpoint.commit(cfg.checkpoint.dir, step, tmp, state, cfg.checkpoint.keep_last)
    cfg.checkpoint.resume = final
    return {
        "restore/from_step": step,
        "restore/source": str(source.path),
        "restore/checkpoint_sha": checkpoint_policy(final)[1],
    }


def verify_restored_weights(trainer, restored: dict[str, Any]) -> None:
    """Check the learner holds the restored checkpoint's policy; record its checksum."""
    import ray


    file_tensors, _ = checkpoint_policy(trainer.resume_dir)
    held = unpack(ray.get(trainer.learners.policy_weights()))
    restored["restore/policy_sha"] = policy_checksum(held, file_tensors)
    if restored["restore/policy_sha"] != restored["restore/checkpoint_sha"]:
        raise RuntimeError(
            f"restore from {restored['restore/source']}: the learner's policy (checksum "
            f"{restored['restore/policy_sha']}) differs from the checkpoint's "
            f"({restored['restore/checkpoint_sha']})"
        )
    if trainer.step_index != restored["restore/from_step"]:
        raise RuntimeError(
            f"restore from {restored['restore/source']}: the trainer resumed at step "
            f"{trainer.step_index}, the checkpoint is step {restored['restore/from_step']}"
        )


class TrialReporter:
    """``Trainer.train(on_step=...)`` callback: one ``tune.report`` per step.

    Every metric keeps its latest value, so the sweep's metric (an eval metric measured every
    few steps) is in every report the schedulers see. The last step's report is held back
    until :meth:`finish`: ASHA stops a trial as soon as it reports ``max_t`` steps, and the run
    must first export its policy and close its logs.

    Each report's step, metric and saved policy checksum are also appended to
    ``<run_dir>/reports.jsonl``: Tune's own trial logs (``result.json``) can lose the rows
    before a restart when PBT pauses and restores a trial, this record keeps every start's.
    """

    def __init__(self, trainer, restored: dict[str, Any], run_dir: str):
        self.trainer = trainer
        self.metric = trainer.cfg.tune.metric
        self.latest: dict[str, Any] = dict(restored)
        self.final: Optional[tuple[dict, Any]] = None
        self.record = os.path.join(run_dir, "reports.jsonl")

    def __call__(self, step: int, metrics: dict[str, float], saved: Optional[str]) -> None:
        from ray import tune

        if not any(k.startswith("eval/") for k in self.latest) and "eval_before" in self.trainer.history:
            self.latest["eval/accuracy"] = self.trainer.history["eval_before"]
        self.latest.update(
            (k, v.item() if hasattr(v, "item") else v) for k, v in metrics.items()
        )
        if self.metric not in self.latest:
            raise ValueError(
                f"tune.metric: {self.metric!r} is not a metric the run reports; "
                f"it reports {', '.join(sorted(self.latest))}"
            )
        report = {**self.latest, "step": step}
        ckpt = None
        if saved is not None:
            report["checkpoint/step"] = step
            report["checkpoint/policy_sha"] = checkpoint_policy(saved)[1]
            ckpt = tune.Checkpoint.from_directory(saved)
        if step >= self.trainer.cfg.total_steps:
            self.final = (report, ckpt)
        else:
            self._report(report, ckpt)

    def finish(self) -> None:
        if self.final is not None:
            self._report(*self.final)

    def _report(self, report: dict, ckpt) -> None:
        from ray import tune

        keys = ("step", self.metric, "checkpoint/step", "checkpoint/policy_sha", "restore/source")
        line = {k: report[k] for k in keys if k in report}
        with open(self.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")
        # Stopping a trial (ASHA, a PBT exploit) ends it inside this call.
        tune.report(report, checkpoint=ckpt)


def _log_start(run_dir: str, values: dict, restored: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    line = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "values": values,
        "restored": restored or None,
    }
    with open(os.path.join(run_dir, "starts.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")


def run_trial(config: dict, base: RayppoConfig = None, root: str = "") -> None:
    """The Tune trainable: one whole RL run with the trial's sampled values."""
    from ray import tune

    from pipeline.stages.train import Trainer

    values = {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}
    run_dir = os.path.join(root, "runs", tune.get_context().get_trial_id())
    cfg = trial_config(base, values, run_dir, os.path.basename(root))
    source = tune.get_checkpoint()
    restored = restore_into(cfg, source) if source is not None else {}
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        if restored:
            verify_restored_weights(trainer, restored)
        _log_start(run_dir, values, restored)
        reporter = TrialReporter(trainer, restored, run_dir)
        trainer.train(on_step=reporter)
        reporter.finish()
    finally:
        # A trial that Tune stops (ASHA, PBT exploit) leaves through tune.report; its actors
        # also die with this process and its placement group, this just ends them in order.
        logger = getattr(trainer, "logger", None)
        if logger is not None:
            logger.close()
        trainer.shutdown()


# ------------------------------------------------------------------------------ the driver


def make_scheduler(cfg: RayppoConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    tc = cfg.tune
    if tc.scheduler == "asha":
        return ASHAScheduler(
            time_attr="step",
            max_t=cfg.total_steps,
            grace_period=tc.grace_period,
            reduction_factor=tc.reduction_factor,
        )
    if tc.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="step",
            perturbation_interval=tc.perturbation_interval,
            hyperparam_mutations=pbt_mutations(parse_space(cfg)),
            quantile_fraction=tc.quantile_fraction,
            resample_probability=tc.resample_probability,
            synch=tc.pbt_synch,
        )
    return FIFOScheduler()


def _trials_in_space(cfg: RayppoConfig) -> int:
    grid = math.prod(len(d.args) for d in parse_space(cfg) if d.sampler == "grid")
    return grid * cfg.tune.num_samples


def _trial_totals(cfg: RayppoConfig) -> dict[str, float]:
    from pipeline.controller.placement import trial_bundles

    total: dict[str, float] = {}
    for bundle in trial_bundles(cfg):
        for key, amount in bundle.items():
            total[key] = total.get(key, 0.0) + amount
    return total


def start_ray(cfg: RayppoConfig) -> None:
    """Start (or join) Ray; a local one gets enough CPUs for the concurrent trials, and a
    cluster that cannot hold even one trial fails here instead of leaving it pending."""
    import ray

    from pipeline.controller.ray_setup import init_ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS") and cfg.resources.local_num_cpus is None:
        concurrent = min(cfg.tune.max_concurrent_trials or math.inf, _trials_in_space(cfg))
        sized = copy.deepcopy(cfg)
        sized.resources.local_num_cpus = max(
            os.cpu_count() or 1, math.ceil(_trial_totals(cfg)["CPU"] * concurrent)
        )
        cfg = sized
    init_ray(cfg)
    have = ray.cluster_resources()
    need = _trial_totals(cfg)
    short = {k: v for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        raise ValueError(
            "resources: one trial reserves "
            + ", ".join(f"{v:g} {k}" for k, v in need.items())
            + f" (tune.driver_cpus + {cfg.learner.num_ranks} learner ranks + "
            f"{cfg.rollout.num_workers} engines) but the Ray cluster has "
            + ", ".join(f"{have.get(k, 0.0):g} {k}" for k in short)
        )


def check_sweep_dir(path: str, resume: bool) -> None:
    """``--resume`` needs a sweep at ``path``; a new sweep must not overwrite one."""
    from ray import tune

    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise ValueError(f"--resume: no sweep to resume at {path} (set by storage_path and tune.name)")
    if not resume and exists:
        raise ValueError(
            f"tune.name: {path} already holds a sweep; continue it with `rayppo sweep CONFIG --resume` "
            "or choose another tune.name"
        )


def _trial_resources(cfg: RayppoConfig):
    from ray import tune

    from pipeline.controller.placement import trial_bundles, trial_placement_options

    return tune.PlacementGroupFactory(trial_bundles(cfg), **trial_placement_options(cfg))


def build_tuner(cfg: RayppoConfig, resume: bool, callbacks: Iterable = ()):
    """A new ``Tuner`` for ``cfg`` or, with ``resume``, the one restored from its directory."""
    from ray import tune

    path = sweep_dir(cfg)
    base = _absolute_inputs(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, root=path),
        resources=lambda values: _trial_resources(apply_values(base, values)),
    )
    if resume:
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    tc = cfg.tune
    keep = max(2, cfg.checkpoint.keep_last)
    return tune.Tuner(
        trainable,
        param_space=tune_param_space(parse_space(cfg)),
        tune_config=tune.TuneConfig(
            metric=tc.metric,
            mode=tc.mode,
            num_samples=tc.num_samples,
            max_concurrent_trials=tc.max_concurrent_trials,
            scheduler=make_scheduler(cfg),
            # A fresh process per trial: no state (reward-function globals, W&B) leaks over.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=os.path.basename(path),
            storage_path=os.path.dirname(path),
            # PBT restarts weak trials from a strong trial's last checkpoint: keep a few more.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep + 2 if tc.scheduler == "pbt" else keep),
            callbacks=list(callbacks),
            verbose=1,
        ),
    )


# ------------------------------------------------------------------------------ the results


@dataclass
class TrialRow:
    trial: str
    values: dict[str, Any]
    last: float
    """The metric's last reported value (what the trial ended with)."""
    best: float
    """The metric's best value over the trial's reports."""
    steps: int
    checkpoint: str
    error: bool


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def collect_rows(result_grid, cfg: RayppoConfig) -> list[TrialRow]:
    metric, sign = cfg.tune.metric, (1 if cfg.tune.mode == "max" else -1)
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        frame = result.metrics_dataframe
        series = [] if frame is None or metric not in frame else [v for v in frame[metric] if _finite(v)]
        rows.append(
            TrialRow(
                trial=str(metrics.get("trial_id") or os.path.basename(result.path)),
                values={k: result.config[k] for k in cfg.tune.search_space if k in (result.config or {})},
                last=float(metrics[metric]) if _finite(metrics.get(metric)) else float("nan"),
                best=max(series, key=lambda v: sign * v) if series else float("nan"),
                steps=int(metrics.get("step", 0) or 0),
                checkpoint=result.checkpoint.path if result.checkpoint else "-",
                error=result.error is not None,
            )
        )
    return rows


def best_row(rows: list[TrialRow], mode: str) -> Optional[TrialRow]:
    """The trial with the best last value (ties: the one that ran more steps)."""
    sign = 1 if mode == "max" else -1
    done = [r for r in rows if _finite(r.last)]
    return max(done, key=lambda r: (sign * r.last, r.steps)) if done else None


def results_table(rows: list[TrialRow], cfg: RayppoConfig) -> str:
    def num(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [
        (
            r.trial + (" (error)" if r.error else ""),
            ", ".join(f"{k}={num(v)}" for k, v in r.values.items()) or "-",
            num(r.last),
            num(r.best),
            f"{r.steps}/{cfg.total_steps}",
            r.checkpoint,
        )
        for r in rows
    ]
    metric = cfg.tune.metric
    return format_table(table, ("trial", "hyperparameters", f"{metric} last", "best", "steps", "checkpoint"))


@dataclass
class SweepOutcome:
    path: str
    rows: list[TrialRow]
    best: Optional[TrialRow]
    best_config: Optional[str]
    """``best_config.yaml``: the base config with the best trial's values (``rayppo train``)."""


def run_sweep(cfg: RayppoConfig, resume: bool = False, callbacks: Iterable = ()) -> SweepOutcome:
    """Run (or resume) the sweep of ``cfg``, print the results table, write the best config."""
    # Trials keep the driver's working directory, as `rayppo train` would: relative paths in
    # the config (reward modules, data) mean the same thing in every trial.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")

    path = sweep_dir(cfg)
    check_sweep_dir(path, resume)
    preflight.check_sweep(cfg)
    start_ray(cfg)
    tuner = build_tuner(cfg, resume, callbacks)
    grid = tuner.fit()
    rows = collect_rows(grid, cfg)
    table = results_table(rows, cfg)
    print(table)
    with open(os.path.join(path, "results.txt"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    best = best_row(rows, cfg.tune.mode)
    best_config = None
    if best is not None:
        best_config = save_config(apply_values(cfg, best.values), os.path.join(path, "best_config.yaml"))
        print(f"best trial {best.trial}: {cfg.tune.metric} = {best.last:.4g}; config: {best_config}")
    else:
        print(f"no trial reported a finite {cfg.tune.metric}; no best config written")
    return SweepOutcome(path, rows, best, best_config)
