"""Placement: bundle layouts, the fail-fast feasibility check, and real placement groups on a
real multi-node Ray cluster (run in a subprocess so it does not disturb the session's Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.config import load_config
from pipeline.controller.placement import check_feasible, role_layouts, trial_bundles, trial_placement_options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def node(node_id: str, resources: dict, labels: dict | None = None) -> dict:
    """A node as ``ray.nodes()`` describes it (the fields the check reads)."""
    return {
        "NodeID": node_id * 8,
        "NodeManagerAddress": "10.0.0.1",
        "Alive": True,
        "Resources": {"memory": 1e9, f"node:{node_id}": 1.0, **resources},
        "Labels": {"ray.io/node-id": node_id, **(labels or {})},
    }


def test_colocated_layout_and_trial_bundles():
    cfg = load_config(None)
    learner, rollout = role_layouts(cfg)
    assert learner.bundles == [{"CPU": 1.0}, {"CPU": 1.0}] and learner.actor_bundle == [0, 1]
    assert rollout.bundles == [{"CPU": 1.0}] and not learner.spread
    cfg.tune.driver_cpus = 0.5
    assert trial_bundles(cfg) == [{"CPU": 0.5}, {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]


def test_trial_label_selectors_follow_the_trial_bundles():
    cfg = load_config(None, ["resources.placement=disaggregated", "resources.learner_node_labels={pool: learner}"])
    selectors = trial_placement_options(cfg)["bundle_label_selector"]
    assert len(selectors) == len(trial_bundles(cfg))
    assert selectors == [{}, {"pool": "learner"}, {"pool": "learner"}, {}]  # driver, 2 ranks, engine
    assert trial_placement_options(load_config(None)) == {}


def test_disaggregated_layout_with_ranks_per_node():
    cfg = load_config(
        None,
        [
            "learner.num_ranks=4",
            "resources.placement=disaggregated",
            "resources.gpus_per_learner=1",
            "resources.learner_ranks_per_node=2",
            "resources.learner_node_resources={learner_pool: 0.01}",
            "resources.rollout_node_labels={pool: rollout}",
            "resources.gpus_per_rollout_worker=2",
            "rollout.tensor_parallel_size=2",
        ],
    )
    learner, rollout = role_layouts(cfg)
    # Two node-sized bundles of 2 ranks each, on distinct nodes.
    assert learner.bundles == [{"CPU": 2.0, "GPU": 2.0, "learner_pool": 0.02}] * 2
    assert learner.actor_bundle == [0, 0, 1, 1] and learner.spread
    assert learner.actor_resources == {"CPU": 1.0, "GPU": 1.0}
    assert rollout.bundles == [{"CPU": 1.0, "GPU": 2.0}] and rollout.labels == {"pool": "rollout"}


def test_ranks_per_node_must_divide_ranks():
    with pytest.raises(ValueError, match="learner.num_ranks .3. must be a multiple of resources.learner_ranks_per_node"):
        load_config(None, ["learner.num_ranks=3", "prompts_per_step=12", "resources.learner_ranks_per_node=2"])


def test_pools_need_disaggregated_placement():
    with pytest.raises(ValueError, match="resources.rollout_node_labels selects a node pool"):
        load_config(None, ["resources.rollout_node_labels={pool: rollout}"])
    with pytest.raises(ValueError, match="resources.learner_node_resources.GPU: must be a custom resource"):
        load_config(None, ["resources.placement=disaggregated", "resources.learner_node_resources={GPU: 1}"])


def test_feasible_cluster_passes():
    cfg = load_config(None, ["resources.placement=disaggregated", "resources.learner_node_labels={pool: learner}"])
    check_feasible(cfg, [node("a", {"CPU": 1.0}), node("b", {"CPU": 2.0}, {"pool": "learner"})])


def test_missing_gpus_name_the_totals():
    cfg = load_config(None, ["resources.gpus_per_learner=1", "resources.gpus_per_rollout_worker=1"])
    with pytest.raises(ValueError) as err:
        check_feasible(cfg, [node("a", {"CPU": 8.0})])
    text = str(err.value)
    assert "asks for 3 GPU in total (2 learner ranks, 1 rollout workers) but the Ray cluster has 0 GPU" in text
    assert "node aaaaaaaa (10.0.0.1): {CPU: 8}" in text  # what the cluster has, node by node


def test_no_node_with_the_labels():
    cfg = load_config(None, ["resources.placement=disaggregated", "resources.learner_node_labels={pool: learner}"])
    with pytest.raises(ValueError, match=r"each learner bundle asks for \{CPU: 1\} on a node labelled \{'pool': 'learner'\}, and no node has that"):
        check_feasible(cfg, [node("a", {"CPU": 8.0}, {"pool": "rollout"})])


def test_bundle_larger_than_any_node():
    cfg = load_config(None, ["resources.cpus_per_rollout_worker=6"])
    with pytest.raises(ValueError, match=r"each rollout bundle asks for \{CPU: 6\} on one node, and no node has that"):
        check_feasible(cfg, [node("a", {"CPU": 4.0}), node("b", {"CPU": 4.0})])


def test_spread_needs_enough_nodes():
    cfg = load_config(
        None,
        ["learner.num_ranks=4", "resources.placement=disaggregated", "resources.learner_ranks_per_node=1",
         "resources.learner_node_resources={learner_pool: 0.01}"],
    )
    nodes = [node("a", {"CPU": 4.0, "learner_pool": 1.0}), node("b", {"CPU": 4.0, "learner_pool": 1.0}), node("c", {"CPU": 2.0})]
    with pytest.raises(ValueError, match="learner_ranks_per_node=1 needs 4 distinct nodes .* the cluster has 2"):
        check_feasible(cfg, nodes)


# A real cluster: a head (rollout pool, by custom resource) and two learner nodes (by label).
CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.config import load_config
    from pipeline.controller.placement import Placement, actor_nodes

    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, resources={"rollout_pool": 1}, include_dashboard=False))
    learner_nodes = [cluster.add_node(num_cpus=2, labels={"pool": "learner"}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    out = {"head": cluster.head_node.node_id, "learner_nodes": sorted(n.node_id for n in learner_nodes)}

    @ray.remote
    class Probe:
        pass

    cfg = load_config(None, [
        "resources.placement=disaggregated", "resources.learner_ranks_per_node=1",
        "resources.learner_node_labels={pool: learner}",
        "resources.rollout_node_resources={rollout_pool: 0.5}",
    ])
    placement = Placement.create(cfg)
    learners = [Probe.options(**placement.options("learner", r)).remote() for r in range(2)]
    engines = [Probe.options(**placement.options("rollout", 0)).remote()]
    out["learner"] = [n["node_id"] for n in actor_nodes(learners)]
    out["rollout"] = [n["node_id"] for n in actor_nodes(engines)]
    for a in learners + engines:
        ray.kill(a)

    # While this run holds its groups, a second identical run is feasible on paper but cannot
    # be placed: it must fail after placement_timeout_s, saying what is free.
    cfg.resources.placement_timeout_s = 3
    start = time.time()
    try:
        Placement.create(cfg)
    except ValueError as err:
        out["busy_error"], out["busy_seconds"] = str(err), time.time() - start
    placement.remove()

    # Impossible at once: GPUs the cluster does not have.
    impossible = load_config(None, ["resources.gpus_per_learner=1"])
    start = time.time()
    try:
        Placement.create(impossible)
    except ValueError as err:
        out["impossible_error"], out["impossible_seconds"] = str(err), time.time() - start
    # The second attempt was rolled back: nothing is left reserved.
    out["groups_left"] = [g["state"] for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    print("RESULT " + json.dumps(out))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.integration
def test_placement_on_a_real_multi_node_cluster():
    env = dict(os.environ, PYTHONPATH=ROOT, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    # One learner rank on each learner node (STRICT_SPREAD by label), the engine on the head.
    assert sorted(out["learner"]) == out["learner_nodes"]
    assert out["rollout"] == [out["head"]]
    assert "was not ready after 3 s (resources.placement_timeout_s)" in out["busy_error"]
    assert "free now" in out["busy_error"] and out["busy_seconds"] < 60
    assert "asks for 2 GPU in total (2 learner ranks, 1 rollout workers) but the Ray cluster has 0 GPU" in out["impossible_error"]
    assert out["impossible_seconds"] < 30  # fails at once instead of waiting for GPUs forever
    assert out["groups_left"] == []
