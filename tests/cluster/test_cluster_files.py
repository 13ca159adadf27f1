"""The files in cluster/ parse, match the schemas they are written for, agree with each other,
and name only commands, configs and make targets that exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.cli import COMMANDS
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
README = (CLUSTER / "README.md").read_text()
MAKEFILE = (REPO / "Makefile").read_text()


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _strings(node) -> list[str]:
    """Every string value (and key) inside a parsed YAML document."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _readme_code() -> list[str]:
    """Fenced blocks and inline code spans of the README: where commands are written."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", README, re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    return blocks + inline


def _command_texts() -> list[tuple[str, str]]:
    """(where, text) of everything that may hold a shell command."""
    texts = [("cluster/README.md", t) for t in _readme_code()]
    for path in YAMLS:
        doc = yaml.safe_load(path.read_text())
        texts += [(path.name, s) for s in _strings(doc)]
        # Indented comment lines ("#   ray up ...") carry each manifest's copy-pasteable commands.
        texts += [(path.name, line) for line in path.read_text().splitlines() if re.match(r"\s*#\s{2,}\S", line)]
    # Recipe lines only: the Makefile's comments are prose ("rayppo vs TRL").
    texts += [("Makefile", line) for line in MAKEFILE.splitlines() if line.startswith("\t")]
    return texts


def test_every_yaml_parses_to_a_mapping():
    assert {p.name for p in YAMLS} >= {
        "runtime_env.yaml", "cluster-launcher.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml",
    }
    for path in YAMLS:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path.name


def test_runtime_env_is_valid_for_ray_and_does_not_clash_with_the_driver():
    from ray.runtime_env import RuntimeEnv

    from pipeline.controller.ray_setup import WORKER_ENV

    raw = _load("runtime_env.yaml")
    env = RuntimeEnv(**raw)  # raises on unknown keys or wrong types
    assert env["working_dir"] == "."
    assert {".venv", "runs", ".git"} <= set(raw["excludes"])
    assert raw["env_vars"]["WANDB_MODE"] in ("offline", "online", "disabled")
    assert all(isinstance(v, str) for v in raw["env_vars"].values())
    # ray.init in the driver adds WORKER_ENV; Ray fails a job whose env_vars name the same keys.
    assert not set(raw["env_vars"]) & set(WORKER_ENV)

    # The RayJob's working_dir is the checkout baked into the image (cluster/Dockerfile):
    # validated with this checkout standing in for it.
    job_env = yaml.safe_load(_load("kuberay-rayjob.yaml")["spec"]["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert job_env["working_dir"] == workdir
    RuntimeEnv(**{**job_env, "working_dir": str(REPO)})
    assert not set(job_env["env_vars"]) & set(WORKER_ENV)


def test_cluster_launcher_matches_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    launcher = _load("cluster-launcher.yaml")
    jsonschema.validate(launcher, json.loads(schema_path.read_text()))
    head = launcher["head_start_ray_commands"]
    assert any("--dashboard-host=127.0.0.1" in c for c in head)
    for cmd in head + launcher["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("rayppo[gpu]" in c for c in launcher["setup_commands"])


def _k8s_cluster_specs() -> dict[str, dict]:
    cluster = _load("kuberay-raycluster.yaml")
    job = _load("kuberay-rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    return {"RayCluster": cluster["spec"], "RayJob": job["spec"]["rayClusterSpec"]}


def test_kuberay_manifests_have_a_private_token_protected_head_and_two_pools():
    specs = _k8s_cluster_specs()
    assert specs["RayCluster"] == specs["RayJob"], "the RayJob's cluster spec drifted from the RayCluster's"
    spec = specs["RayCluster"]
    assert spec["rayVersion"].startswith("2.60")
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"rollout", "learner"}
    for name, group in groups.items():
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert resources == {f"{name}_pool": 1}
        assert group["labels"] == {"pool": name}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    job = _load("kuberay-rayjob.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True


def _pools() -> dict[str, list[tuple[dict, dict]]]:
    """Source -> [(custom resources, labels)] of every non-head node type / worker group."""
    launcher = _load("cluster-launcher.yaml")
    pools = {"cluster-launcher.yaml": [
        (t.get("resources", {}), t.get("labels", {}))
        for name, t in launcher["available_node_types"].items() if name != launcher["head_node_type"]
    ]}
    for source, spec in _k8s_cluster_specs().items():
        pools[source] = [
            (json.loads(json.loads(g["rayStartParams"]["resources"])), g.get("labels", {}))
            for g in spec["workerGroupSpecs"]
        ]
    return pools


def test_gpu_config_asks_for_pools_every_cluster_definition_provides():
    cfg = load_config(REPO / "configs" / "cluster_gpu.yaml")
    res = cfg.resources
    assert res.placement == "disaggregated"
    for source, nodes in _pools().items():
        homes = {}
        for role, wanted, labels in (
            ("learner", res.learner_node_resources, res.learner_node_labels),
            ("rollout", res.rollout_node_resources, res.rollout_node_labels),
        ):
            fitting = [
                i for i, (have, node_labels) in enumerate(nodes)
                if all(have.get(k, 0) >= v for k, v in wanted.items())
                and all(node_labels.get(k) == v for k, v in labels.items())
            ]
            assert fitting, f"{source}: no node type holds the {role} pool {wanted} {labels}"
            homes[role] = set(fitting)
        assert not homes["learner"] & homes["rollout"], f"{source}: one node type serves both pools"


def test_local_config_uses_the_pools_of_the_local_cluster_script():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("local_cluster", CLUSTER / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cfg = load_config(REPO / "configs" / "cluster_local.yaml")
    nodes = {n.name: n for n in module.DEFAULT_NODES}
    assert set(cfg.resources.rollout_node_resources) <= set(nodes["head"].resources)
    assert set(cfg.resources.learner_node_resources) <= set(nodes["worker"].resources)
    assert cfg.resources.placement == "disaggregated"


def test_every_rayppo_command_named_exists():
    found = []
    for where, text in _command_texts():
        for command in re.findall(r"(?:^|[\s;&|(`'\"])rayppo\s+([a-z][a-z-]*)", text):
            found.append(command)
            assert command in COMMANDS, f"{where}: `rayppo {command}` is not a CLI command ({sorted(COMMANDS)})"
    assert "train" in found


def test_every_config_named_exists_and_loads():
    named = set()
    for where, text in _command_texts():
        for path in re.findall(r"(?<![\w/])(configs/[\w./-]+\.yaml)", text):
            named.add(path)
            assert (REPO / path).is_file(), f"{where}: {path} does not exist"
    assert {"configs/cluster_gpu.yaml", "configs/cluster_local.yaml"} <= named
    for path in sorted(named):
        load_config(REPO / path)  # raises ValueError naming the field if invalid


def test_every_make_target_named_exists():
    targets = set(re.findall(r"^([\w-]+):", MAKEFILE, re.M))
    named = set()
    for where, text in _command_texts():
        if where == "Makefile":
            continue
        for target in re.findall(r"\bmake\s+([a-z][\w-]*)", text):
            named.add(target)
            assert target in targets, f"{where}: `make {target}` is not a Makefile target"
    assert "submit" in named
    assert re.search(r"^\.PHONY:.*\bsubmit\b", MAKEFILE, re.M)


def test_dockerfile_copies_only_what_exists():
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY"):
            sources = [w for w in shlex.split(line)[1:-1] if not w.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"


def test_readme_submit_command_is_the_makefiles():
    blocks = re.findall(r"```[^\n]*\n(.*?)```", README, re.S)
    documented = [
        line.strip() for block in blocks for line in block.splitlines()
        if line.strip().startswith("ray job submit")
    ]
    assert len(documented) == 1, documented
    words = shlex.split(documented[0])
    address = words[words.index("--address") + 1]
    config = words[words.index("train") + 1]
    assert (REPO / config).is_file()
    made = subprocess.run(
        ["make", "-n", "-s", "submit", f"ADDRESS={address}", f"CONFIG={config}"],
        cwd=REPO, capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k not in ("ARGS", "RUNTIME_ENV", "MAKEFLAGS")},
    ).stdout.strip().splitlines()
    assert len(made) == 1, made
    made_words = [w for w in shlex.split(made[0]) if not w.startswith("RAY_AUTH_MODE=")]
    assert Path(made_words[0]).name == "ray"
    assert made_words[1:] == words[1:]


@pytest.mark.parametrize(
    "token_at, auth_mode, expected",
    [
        (None, None, None),  # no token anywhere: nothing to send, a head without auth accepts
        ("home", None, "token"),  # a token where Ray looks (a local ray.init writes ~/.ray/auth_token)
        ("path", None, "token"),
        ("home", "disabled", "disabled"),  # the user's own choice is kept
    ],
)
def test_make_submit_sends_the_token_when_there_is_one(tmp_path, token_at, auth_mode, expected):
    """Ray 2.60's ``ray start`` enables token auth whenever a token exists, and ``ray job
    submit`` sends it only with RAY_AUTH_MODE=token: ``make submit`` sets that when it finds one."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k not in ("ARGS", "MAKEFLAGS")}
    env["HOME"] = str(home)
    if token_at == "home":
        (home / ".ray" / "auth_token").write_text("t" * 32)
    elif token_at == "path":
        (tmp_path / "token").write_text("t" * 32)
        env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "token")
    if auth_mode:
        env["RAY_AUTH_MODE"] = auth_mode
    line = subprocess.run(["make", "-n", "-s", "submit"], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    prefix = [w for w in shlex.split(line) if w.startswith("RAY_AUTH_MODE=")]
    assert prefix == ([] if expected in (None, auth_mode) else [f"RAY_AUTH_MODE={expected}"]), line


def test_cluster_runs_and_the_rayjob_retry_resume():
    """A retried job continues: the cluster configs resume automatically and the RayJob retries."""
    for name in ("cluster_gpu.yaml", "cluster_local.yaml"):
        assert load_config(REPO / "configs" / name).checkpoint.resume == "auto", name
    job = _load("kuberay-rayjob.yaml")["spec"]
    assert job["backoffLimit"] >= 1
    config = shlex.split(job["entrypoint"])[2]
    assert load_config(REPO / config).checkpoint.resume == "auto"
