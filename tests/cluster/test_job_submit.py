"""The documented cluster path end to end: a real two-node Ray cluster on this machine (head
with ``rollout_pool``, worker with ``learner_pool``, token auth on), ``make submit`` running
``ray job submit ... -- rayppo train configs/cluster_local.yaml``, and the run's outputs and
placement checked afterwards."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.local_cluster import REPO, running_cluster

JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("rpc") as started:
        yield started


def _job_client(cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers())


@pytest.mark.integration
def test_submitted_job_runs_roles_on_their_node_pools(cluster, tiny_model, tmp_path):
    nodes = {n["node_id"]: n for n in cluster.nodes()}
    assert len(nodes) == 2, nodes
    pool_node = {
        pool: next(i for i, n in nodes.items() if n["resources_total"].get(pool))
        for pool in ("rollout_pool", "learner_pool")
    }
    assert pool_node["rollout_pool"] != pool_node["learner_pool"]

    storage = tmp_path / "storage"
    overrides = [f"model.path={tiny_model}", f"storage_path={storage}"]
    submit = subprocess.run(
        ["make", "-s", "submit", f"ADDRESS={cluster.dashboard_url}",
         "CONFIG=configs/cluster_local.yaml", "ARGS=" + " ".join(overrides)],
        cwd=REPO, env=cluster.client_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )
    client = _job_client(cluster)
    jobs = client.list_jobs()
    assert len(jobs) == 1, [j.submission_id for j in jobs]
    job = jobs[0]
    if submit.returncode != 0 or job.status != "SUCCEEDED":
        logs = client.get_job_logs(job.submission_id)
        pytest.fail(
            f"job {job.submission_id} ended {job.status} (make exit {submit.returncode}): {job.message}\n"
            f"--- make output ---\n{submit.stdout[-4000:]}\n{submit.stderr[-2000:]}\n"
            f"--- job logs ---\n{logs[-8000:]}"
        )
    assert job.entrypoint.startswith("rayppo train configs/cluster_local.yaml")

    # Outputs land under storage_path (the config's dirs are relative).
    rows = [json.loads(line) for line in (storage / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all("reward/mean" in r for r in rows[1:])
    latest = storage / "checkpoints" / "latest"
    assert (latest / "state.json").is_file()
    assert json.loads((latest / "state.json").read_text())["step"] == 2
    assert (latest / "policy" / "model.safetensors").is_file()
    assert (storage / "policy" / "config.json").is_file()

    # Each role ran on the node of its pool: learner ranks on the worker, the engine on the head.
    placement = json.loads((storage / "logs" / "placement.json").read_text())
    assert placement["placement"] == "disaggregated"
    assert [r["rank"] for r in placement["learner"]] == [0, 1]
    assert {r["node_id"] for r in placement["learner"]} == {pool_node["learner_pool"]}
    assert [r["index"] for r in placement["rollout"]] == [0]
    assert {r["node_id"] for r in placement["rollout"]} == {pool_node["rollout_pool"]}
