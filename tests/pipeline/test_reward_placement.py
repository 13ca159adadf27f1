"""Actor-backed reward sources as placement roles: their bundles in the run's layout, in Tune
trial bundles, in the resource totals and in the fail-fast check."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.controller.placement import (
    all_layouts,
    check_feasible,
    requested_resources,
    reward_layouts,
    trial_bundles,
    trial_placement_options,
)

SOURCES = (
    "reward.sources=[{kind: rule}, {kind: model, name: rm, path: m, num_actors: 2, cpus: 0.5, gpus: 0.25},"
    " {kind: judge, path: j, cpus: 2}, {kind: similarity}]"
)


def node(node_id: str, resources: dict, labels: dict | None = None) -> dict:
    return {
        "NodeID": node_id * 8,
        "NodeManagerAddress": "10.0.0.1",
        "Alive": True,
        "Resources": {"memory": 1e9, f"node:{node_id}": 1.0, **resources},
        "Labels": {"ray.io/node-id": node_id, **(labels or {})},
    }


def test_only_actor_sources_get_bundles():
    cfg = load_config(None, [SOURCES])
    layouts = reward_layouts(cfg)
    assert [l.role for l in layouts] == ["reward:rm", "reward:judge"]
    rm, judge = layouts
    assert rm.bundles == [{"CPU": 0.5, "GPU": 0.25}] * 2 and rm.actor_bundle == [0, 1]
    assert rm.actor_resources == {"CPU": 0.5, "GPU": 0.25}
    assert judge.bundles == [{"CPU": 2.0}]
    assert reward_layouts(load_config(None)) == []  # the rule shorthand runs on the driver


def test_trial_bundles_and_totals_include_reward_actors():
    cfg = load_config(None, [SOURCES, "tune.driver_cpus=0.5"])
    # driver, 2 learner ranks, 1 engine, then the reward model's 2 actors and the judge's 1
    assert trial_bundles(cfg) == [
        {"CPU": 0.5}, {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0},
        {"CPU": 0.5, "GPU": 0.25}, {"CPU": 0.5, "GPU": 0.25}, {"CPU": 2.0},
    ]
    assert requested_resources(cfg) == {"CPU": 6.0, "GPU": 0.5}
    assert [l.role for l in all_layouts(cfg)] == ["learner", "rollout", "reward:rm", "reward:judge"]


def test_trial_selectors_carry_reward_node_labels():
    cfg = load_config(None, [
        "resources.placement=disaggregated",
        "reward.sources=[{kind: model, path: m, node_labels: {pool: rm}}]",
    ])
    selectors = trial_placement_options(cfg)["bundle_label_selector"]
    assert selectors == [{}, {}, {}, {}, {"pool": "rm"}]


def test_feasibility_names_reward_actors():
    cfg = load_config(None, [SOURCES])
    with pytest.raises(ValueError) as err:
        check_feasible(cfg, [node("a", {"CPU": 8.0})])
    text = str(err.value)
    assert "asks for 0.5 GPU in total (2 learner ranks, 1 rollout workers, 3 reward actors)" in text
    assert "each reward:rm bundle asks for {CPU: 0.5, GPU: 0.25} on one node, and no node has that" in text
    check_feasible(cfg, [node("a", {"CPU": 8.0, "GPU": 1.0})])


def test_reward_bundle_with_labels_needs_a_matching_node():
    cfg = load_config(None, [
        "resources.placement=disaggregated", "reward.sources=[{kind: judge, path: j, node_labels: {pool: judge}}]",
    ])
    with pytest.raises(ValueError, match=r"each reward:judge bundle asks for \{CPU: 1\} on a node labelled \{'pool': 'judge'\}"):
        check_feasible(cfg, [node("a", {"CPU": 8.0})])
    check_feasible(cfg, [node("a", {"CPU": 8.0}), node("b", {"CPU": 1.0}, {"pool": "judge"})])
