"""Faults on a real two-node Ray cluster on this machine (``cluster/local_cluster.py``, token
auth on; engines on the head, learner ranks on the worker), with runs submitted as jobs the way
``make submit`` does: the learner node lost mid-run, and a job whose driver dies while it
writes a checkpoint, then retried as KubeRay's ``backoffLimit`` retries it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from pipeline.infra import fault_injection
from tests.faults.conftest import RUN_OVERRIDES, STEPS, logged_steps, max_weight_difference
from tests.local_cluster import REPO, local_cluster, running_cluster

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("rpf", grace_s=5.0) as started:
        yield started


def _client(cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers())


def _submit(cluster, tiny_model: str, storage: Path, *extra: str, fault_dir: str | None = None) -> str:
    """``make submit CONFIG=configs/cluster_local.yaml`` through the SDK (so a test can add a
    fault directory to the job's environment); the run is the reference run's."""
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    if fault_dir:
        runtime_env["env_vars"][fault_injection.ENV] = fault_dir
    overrides = [f"model.path={tiny_model}", f"storage_path={storage}", *RUN_OVERRIDES, *extra]
    return _client(cluster).submit_job(
        entrypoint="rayppo train configs/cluster_local.yaml " + " ".join(overrides), runtime_env=runtime_env
    )


def _wait(cluster, job_id: str, timeout_s: float = JOB_TIMEOUT_S):
    from ray.job_submission import JobStatus

    client, deadline = _client(cluster), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status, client.get_job_logs(job_id)
        time.sleep(1.0)
    client.stop_job(job_id)
    pytest.fail(f"job {job_id} still running after {timeout_s:g} s:\n{client.get_job_logs(job_id)[-6000:]}")


def _committed_step(checkpoints: Path) -> int | None:
    try:
        return json.loads((checkpoints / "latest" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def _assert_complete(storage: Path, reference_run: str) -> None:
    rows = logged_steps(str(storage / "logs"))
    assert [r["step"] for r in rows] == list(range(STEPS + 1))  # none missing, none twice
    latest = storage / "checkpoints" / "latest"
    assert os.readlink(latest) == f"step_{STEPS:06d}" and (latest / "state.json").is_file()
    assert max_weight_difference(str(storage / "policy"), os.path.join(reference_run, "policy")) <= 1e-6


def _lose_node(cluster, name: str) -> list[tuple[int, str]]:
    """Kill node ``name``'s raylet (SIGKILL by pid); returns its processes, to clean up after."""
    node = next(p for p in cluster.processes if p["name"] == name)
    processes = [(node["pid"], node["start_time"])] + local_cluster._descendants(node["pid"])
    os.kill(local_cluster.raylet_pid(cluster, name), signal.SIGKILL)
    return processes


# A cluster to start, the reference run, then up to three waits of JOB_TIMEOUT_S.
@pytest.mark.timeout(1800)
def test_job_survives_losing_its_learner_node_and_a_driver_killed_mid_checkpoint(
        cluster, tiny_model, tmp_path, reference_run):
    """A preemptible cluster's day: the node holding the learner ranks is lost after step 1 (the
    run recovers in place once a node is back), then the job's driver dies while it writes the
    last checkpoint (the job fails; its retry, the same entrypoint, resumes from ``latest``)."""
    storage, faults = tmp_path / "storage", str(tmp_path / "faults")
    checkpoints = storage / "checkpoints"
    fault_injection.arm(faults, "driver.checkpoint", step=STEPS)  # SIGKILL inside save(STEPS)
    job = _submit(cluster, tiny_model, storage, "resources.placement_timeout_s=120", fault_dir=faults)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (_committed_step(checkpoints) or 0) < 1:
        assert time.monotonic() < deadline, (
            f"waited {JOB_TIMEOUT_S} s for the step-1 checkpoint in {checkpoints}; job logs:\n"
            + _client(cluster).get_job_logs(job)[-6000:])
        time.sleep(0.2)
    # The driver cannot pass a learner call while its ranks are gone, so the loss is handled
    # before it reaches the last checkpoint.
    killed_at = time.monotonic()
    lost = _lose_node(cluster, "worker")
    spec = next(n for n in local_cluster.DEFAULT_NODES if n.name == "worker")
    local_cluster.add_node(cluster, local_cluster.NodeSpec("worker-2", spec.num_cpus, spec.resources, spec.labels))
    try:
        status, logs = _wait(cluster, job)
    finally:
        for pid, start_time in lost:  # processes of the lost node that outlived its raylet
            if local_cluster._alive(pid, start_time):
                os.kill(pid, signal.SIGKILL)
    failed_at = time.monotonic()
    assert "restarting the learner group" in logs and "recovered in" in logs, logs[-8000:]
    recovered = next(line for line in logs.splitlines() if "recovered in" in line)
    assert status == "FAILED" and fault_injection.fired(faults, "driver.checkpoint"), logs[-8000:]
    rows = logged_steps(str(storage / "logs"))
    assert [r["step"] for r in rows] == list(range(STEPS + 1))  # step 2 ran twice, logged once
    assert rows[STEPS]["faults/learner_restarts"] == 1  # one loss, however many attempts it took
    print("\n" + "\n".join(line for line in logs.splitlines() if line.startswith(("fault:", "recovered"))))
    # Nothing half-written is `latest`: the killed save left only its .tmp directory.
    assert os.readlink(checkpoints / "latest") == f"step_{STEPS - 1:06d}"
    assert (checkpoints / f"step_{STEPS:06d}.tmp").is_dir() and not (checkpoints / f"step_{STEPS:06d}").exists()

    # The retry runs the same entrypoint; configs/cluster_local.yaml has checkpoint.resume: auto.
    status, logs = _wait(cluster, _submit(cluster, tiny_model, storage, fault_dir=faults))
    assert status == "SUCCEEDED", logs[-8000:]
    assert f"resuming from {checkpoints / f'step_{STEPS - 1:06d}'}" in logs
    print(f"\nnode loss: {recovered.strip()}; the attempt ended {failed_at - killed_at:.1f} s after the kill"
          f"\njob retry: the second attempt resumed and finished in {time.monotonic() - failed_at:.1f} s")
    _assert_complete(storage, reference_run)
    placement = json.loads((storage / "logs" / "placement.json").read_text())
    new_node = {n["node_id"] for n in cluster.nodes() if n["resources_total"].get("learner_pool")}
    assert {r["node_id"] for r in placement["learner"]} <= new_node
