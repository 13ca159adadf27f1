"""Where the roles run: placement groups for learner ranks, rollout engines and reward actors.

Every actor of a run is scheduled into a bundle of a placement group, so a run either gets
all it asked for at once or fails: it never starts half its learner ranks and waits forever
for the rest. Layouts (``resources.placement``):

* ``colocated``: one group, strategy PACK, learner bundles, then engine bundles, then the
  bundles of each actor-backed reward source (``model``, ``judge``). Roles share nodes, and GPUs
  when ``gpus_per_*`` (or a source's ``gpus``) are fractions.
* ``disaggregated``: one group per role; each bundle also reserves the role's custom
  resources (``*_node_resources``) and must match its node labels (``*_node_labels``, a
  reward source's ``node_labels``), which is how a role is pinned to its node pool.

Each actor-backed reward source is a role of its own, ``reward:<name>``, since its actors'
resources differ from the other sources'.

``learner_ranks_per_node = k`` turns the learner bundles into node-sized bundles of k ranks;
in a separate learner group they are STRICT_SPREAD, i.e. exactly k ranks on each node.

Inside a Tune trial the trial already holds one placement group laid out by
:func:`trial_bundles` (driver bundle first); the run schedules into it instead of creating
its own, so trials never compete for each other's resources.

Before anything is reserved, :func:`check_feasible` compares the request with the cluster's
nodes and raises ``ValueError`` saying what was asked and what the cluster has; a request the
cluster could hold but has not freed within ``placement_timeout_s`` fails the same way.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Optional

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.config import RayppoConfig
from pipeline.config.envs import user_engine_resources
from pipeline.config.rewards import actor_sources
from pipeline.rewards.actors import reward_role

# Ray rejects bundles without any resource; a role configured with 0 CPUs still gets this.
_MIN_CPU = 0.001


@dataclass
class RoleLayout:
    """The bundles one role needs and which bundle each of its actors uses."""

    role: str
    bundles: list[dict[str, float]]
    labels: dict[str, str]
    actor_bundle: list[int]
    """Bundle index (within ``bundles``) of actor i."""
    actor_resources: dict[str, float]
    """What each actor itself asks for (its share of its bundle)."""
    spread: bool = False
    """Bundles must land on distinct nodes (``learner_ranks_per_node``)."""


def _bundle(cpus: float, gpus: float, custom: dict[str, float], copies: int = 1) -> dict[str, float]:
    out = {"CPU": cpus * copies, "GPU": gpus * copies}
    out.update({k: v * copies for k, v in custom.items()})
    out = {k: v for k, v in out.items() if v > 0}
    return out or {"CPU": _MIN_CPU}


def role_layouts(cfg: RayppoConfig) -> tuple[RoleLayout, RoleLayout]:
    """Learner and rollout layouts of ``cfg`` (custom resources and labels only when
    disaggregated: validation rejects them otherwise)."""
    res, n, m = cfg.resources, cfg.learner.num_ranks, cfg.rollout.num_workers
    # Without learner_ranks_per_node every rank is its own bundle (k = 1) and Ray may pack them.
    k = res.learner_ranks_per_node or 1
    learner = RoleLayout(
        "learner",
        [_bundle(res.cpus_per_learner, res.gpus_per_learner, res.learner_node_resources, k)] * (n // k),
        dict(res.learner_node_labels),
        [rank // k for rank in range(n)],
        {"CPU": res.cpus_per_learner, "GPU": res.gpus_per_learner},
        spread=res.learner_ranks_per_node is not None and n // k > 1,
    )
    rollout = RoleLayout(
        "rollout",
        [_bundle(res.cpus_per_rollout_worker, res.gpus_per_rollout_worker, res.rollout_node_resources)] * m,
        dict(res.rollout_node_labels),
        list(range(m)),
        {"CPU": res.cpus_per_rollout_worker, "GPU": res.gpus_per_rollout_worker},
    )
    return learner, rollout


def reward_layouts(cfg: RayppoConfig) -> list[RoleLayout]:
    """One layout per reward source that runs on actors (role ``reward:<name>``), in
    ``reward.sources`` order: ``num_actors`` bundles of the source's ``cpus`` / ``gpus``."""
    return [
        RoleLayout(
            reward_role(spec.name),
            [_bundle(spec.cpus, spec.gpus, {})] * spec.num_actors,
            dict(spec.node_labels),
            list(range(spec.num_actors)),
            {"CPU": spec.cpus, "GPU": spec.gpus},
        )
        for spec in actor_sources(cfg.reward)
    ]


def all_layouts(cfg: RayppoConfig) -> list[RoleLayout]:
    """Learner, rollout, then every reward source's layout: the order bundles are laid out in."""
    return [*role_layouts(cfg), *reward_layouts(cfg)]


def trial_bundles(cfg: RayppoConfig) -> list[dict[str, float]]:
    """Bundles of one Tune trial (``tune.PlacementGroupFactory``): the trial's driver, then
    every learner bundle, every engine bundle and every reward-actor bundle, the layout
    :class:`Placement` adopts."""
    driver = {"CPU": cfg.tune.driver_cpus} if cfg.tune.driver_cpus > 0 else {"CPU": _MIN_CPU}
    return [driver] + [bundle for layout in all_layouts(cfg) for bundle in layout.bundles]


def trial_placement_options(cfg: RayppoConfig) -> dict:
    """Keyword arguments for ``tune.PlacementGroupFactory(trial_bundles(cfg), **this)``: the
    node labels each bundle must match, in :func:`trial_bundles` order, so a trial keeps its
    roles on their node pools. (A trial is one PACK group: ``learner_ranks_per_node`` still
    keeps k ranks per bundle, but distinct nodes for the bundles are not enforced there.)"""
    selectors = [{}] + [dict(layout.labels) for layout in all_layouts(cfg) for _ in layout.bundles]
    return {"bundle_label_selector": selectors} if any(selectors) else {}


def requested_resources(cfg: RayppoConfig) -> dict[str, float]:
    """Total of every resource the run's actors reserve."""
    total: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    for layout in all_layouts(cfg):
        for bundle in layout.bundles:
            for key, value in bundle.items():
                total[key] = total.get(key, 0.0) + value
    for key, value in user_engine_resources(cfg.env).items():  # the LLM user's own actor
        total[key] += value
    return total


# ------------------------------------------------------------------------------- feasibility


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def _node_summary(nodes: list[dict]) -> str:
    lines = []
    for node in nodes:
        res = {k: v for k, v in node["Resources"].items() if not _internal_resource(k)}
        labels = {k: v for k, v in node.get("Labels", {}).items() if not k.startswith("ray.io/")}
        lines.append(
            f"  node {node['NodeID'][:8]} ({node['NodeManagerAddress']}): {_fmt(res)}"
            + (f" labels {labels}" if labels else "")
        )
    return "\n".join(lines)


def _internal_resource(name: str) -> bool:
    return name.startswith("node:") or name in ("memory", "object_store_memory") or "_group_" in name


def _fits(bundle: dict[str, float], node: dict, labels: dict[str, str]) -> bool:
    have = node["Resources"]
    node_labels = node.get("Labels", {})
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) and all(
        node_labels.get(k) == v for k, v in labels.items()
    )


def check_feasible(cfg: RayppoConfig, nodes: Optional[list[dict]] = None) -> None:
    """Raise ``ValueError`` when no arrangement of the cluster's nodes can hold the run.

    Checks the totals of every resource, that each bundle fits on some node with the right
    labels, and that spread bundles find enough distinct nodes. (Packing several bundles onto
    the same nodes is left to Ray; a request that passes here but cannot be packed fails after
    ``placement_timeout_s`` with the same kind of message.)
    """
    nodes = [n for n in (nodes if nodes is not None else ray.nodes()) if n.get("Alive")]
    cluster: dict[str, float] = {}
    for node in nodes:
        for key, value in node["Resources"].items():
            cluster[key] = cluster.get(key, 0.0) + value
    layouts = all_layouts(cfg)
    what = f"{cfg.learner.num_ranks} learner ranks, {cfg.rollout.num_workers} rollout workers"
    reward_actors = sum(len(layout.bundles) for layout in layouts[2:])
    if reward_actors:
        what += f", {reward_actors} reward actors"
    problems = []
    for key, amount in requested_resources(cfg).items():
        if amount > cluster.get(key, 0.0) + 1e-9:
            problems.append(
                f"this run asks for {amount:g} {key} in total ({what}) "
                f"but the Ray cluster has {cluster.get(key, 0.0):g} {key}"
            )
    for layout in layouts:
        bundle = layout.bundles[0]
        where = f" on a node labelled {layout.labels}" if layout.labels else " on one node"
        matching = [n for n in nodes if _fits(bundle, n, layout.labels)]
        if not matching:
            problems.append(f"each {layout.role} bundle asks for {_fmt(bundle)}{where}, and no node has that")
        elif layout.spread and len(matching) < len(layout.bundles):
            problems.append(
                f"learner_ranks_per_node={cfg.resources.learner_ranks_per_node} needs "
                f"{len(layout.bundles)} distinct nodes that each hold {_fmt(bundle)}{where}; "
                f"the cluster has {len(matching)}"
            )
    if problems:
        raise ValueError(
            "resources: " + "; ".join(problems) + "\ncluster nodes:\n" + _node_summary(nodes)
        )


# ------------------------------------------------------------------------------- placement


@dataclass
class Placement:
    """Placement groups of one run and the scheduling options of each actor."""

    cfg: RayppoConfig
    learner: RoleLayout
    rollout: RoleLayout
    groups: dict[str, PlacementGroup] = field(default_factory=dict)
    """Role -> its group (both roles map to the same group unless disaggregated)."""
    offsets: dict[str, int] = field(default_factory=dict)
    """Role -> index of the role's first bundle within its group."""
    owned: bool = True
    """False when the group belongs to a Tune trial (and outlives this run)."""
    rewards: list[RoleLayout] = field(default_factory=list)
    """Layouts of the actor-backed reward sources (roles ``reward:<name>``)."""

    @classmethod
    def create(cls, cfg: RayppoConfig) -> "Placement":
        """Adopt the enclosing Tune trial's group, or reserve this run's own groups."""
        learner, rollout = role_layouts(cfg)
        rewards = reward_layouts(cfg)
        current = ray.util.get_current_placement_group()
        if current is not None:
            expected = trial_bundles(cfg)
            if len(current.bundle_specs) != len(expected):
                raise ValueError(
                    f"resources: the enclosing placement group has {len(current.bundle_specs)} bundles; "
                    f"this run needs {len(expected)} (driver, learner, rollout, reward): build it with "
                    "pipeline.controller.placement.trial_bundles(cfg)"
                )
            placement = cls(cfg, learner, rollout, owned=False, rewards=rewards)
            offset = 1  # bundle 0 is the trial's driver
            for layout in (learner, rollout, *rewards):
                placement.groups[layout.role], placement.offsets[layout.role] = current, offset
                offset += len(layout.bundles)
            return placement
        check_feasible(cfg)
        placement = cls(cfg, learner, rollout, rewards=rewards)
        try:
            if cfg.resources.placement == "disaggregated":
                for layout in (learner, rollout, *rewards):
                    strategy = "STRICT_SPREAD" if layout.spread else "PACK"
                    placement._reserve(layout.role, [layout], strategy)
            else:
                placement._reserve("both", [learner, rollout, *rewards], "PACK")
        except BaseException:
            placement.remove()
            raise
        return placement

    def _reserve(self, name: str, layouts: list[RoleLayout], strategy: str) -> None:
        bundles, selectors = [], []
        for layout in layouts:
            self.offsets[layout.role] = len(bundles)
            bundles += layout.bundles
            selectors += [dict(layout.labels) for _ in layout.bundles]
        kwargs = {"bundle_label_selector": selectors} if any(selectors) else {}
        # Names must be unique in a cluster; the suffix lets two jobs of one config coexist.
        label = f"rayppo-{self.cfg.run_name}-{name}-{uuid.uuid4().hex[:6]}"
        group = placement_group(bundles, strategy=strategy, name=label, **kwargs)
        for layout in layouts:
            self.groups[layout.role] = group
        timeout = self.cfg.resources.placement_timeout_s
        if not group.wait(timeout_seconds=timeout):
            free = {k: v for k, v in ray.available_resources().items() if not _internal_resource(k)}
            raise ValueError(
                f"resources: the {name} placement group ({strategy}, bundles {[_fmt(b) for b in bundles]}"
                + (f", labels {selectors}" if any(selectors) else "")
                + f") was not ready after {timeout:g} s (resources.placement_timeout_s); "
                f"the cluster has {_fmt(free)} free now (other jobs may hold the rest)\n"
                + "cluster nodes:\n" + _node_summary([n for n in ray.nodes() if n.get("Alive")])
            )

    def options(self, role: str, index: int) -> dict:
        """``ray.remote(...).options(**this)`` for actor ``index`` of ``role``."""
        layouts = {layout.role: layout for layout in (self.learner, self.rollout, *self.rewards)}
        if role not in layouts:
            raise ValueError(f"placement: no role {role!r}; this run has {sorted(layouts)}")
        layout = layouts[role]
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.groups[role],
            placement_group_bundle_index=self.offsets[role] + layout.actor_bundle[index],
            # An engine's own children (vLLM's tensor-parallel workers) stay in its bundle.
            placement_group_capture_child_tasks=role != "learner",
        )
        return {
            "num_cpus": layout.actor_resources["CPU"],
            "num_gpus": layout.actor_resources["GPU"],
            "scheduling_strategy": strategy,
        }

    def describe(self, role: str, index: int) -> str:
        """Where actor ``index`` of ``role`` waits: its bundle, what it holds, its group's
        state (``RESCHEDULING`` while a lost node's bundles look for a new one) and the nodes."""
        layout = {lay.role: lay for lay in (self.learner, self.rollout, *self.rewards)}[role]
        group = self.groups[role]
        bundle = self.offsets[role] + layout.actor_bundle[index]
        try:
            state = ray.util.placement_group_table(group).get("state", "unknown")
        except Exception:  # noqa: BLE001 - a description must not fail
            state = "unknown"
        labels = f" on a node labelled {layout.labels}" if layout.labels else ""
        return (
            f"{role} {index} waits for bundle {bundle} of placement group {group.id.hex()[:8]} "
            f"(state {state}): {_fmt(layout.bundles[layout.actor_bundle[index]])}{labels}\n"
            "cluster nodes:\n" + _node_summary([n for n in ray.nodes() if n.get("Alive")])
        )

    def remove(self) -> None:
        if not self.owned:
            return
        for group in {id(g): g for g in self.groups.values()}.values():
            try:
                remove_placement_group(group)
            except Exception:  # already gone with the cluster
                pass
        self.groups.clear()


def actor_nodes(actors: list, timeout_s: float = 60.0) -> list[dict[str, str]]:
    """Node id and address each actor runs on (asked of the actors themselves). An actor that
    is gone or does not answer within ``timeout_s`` is reported as such: a report never fails
    or hangs a run."""

    def where(_self) -> dict[str, str]:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address()}

    refs = [a.__ray_call__.remote(where) for a in actors]
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    nodes = []
    for ref in refs:
        try:
            nodes.append(ray.get(ref, timeout=0))
        except Exception as exc:  # noqa: BLE001 - a dead or hung actor has no node to report
            nodes.append({"node_id": None, "node_ip": None, "error": type(exc).__name__})
    return nodes


def write_report(path: str, placement: Placement, learners: list, engines: list,
                 rewards: Optional[dict[str, list]] = None) -> dict:
    """``placement.json``: the layout and the node of every learner rank, engine and reward
    actor (``rewards``: source name -> its actors)."""
    report = {
        "placement": placement.cfg.resources.placement,
        "in_tune_trial": not placement.owned,
        "learner": [{"rank": i, **n} for i, n in enumerate(actor_nodes(learners))],
        "rollout": [{"index": i, **n} for i, n in enumerate(actor_nodes(engines))],
        "reward": [
            {"source": name, "index": i, **n}
            for name, actors in (rewards or {}).items()
            for i, n in enumerate(actor_nodes(actors))
        ],
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)
    return report


__all__ = [
    "Placement",
    "RoleLayout",
    "actor_nodes",
    "all_layouts",
    "check_feasible",
    "requested_resources",
    "reward_layouts",
    "role_layouts",
    "trial_bundles",
    "trial_placement_options",
    "write_report",
]
