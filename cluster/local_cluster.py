"""A Ray cluster of one head and one worker node on this machine, with the node pools of
``configs/cluster_local.yaml``: try ``ray job submit`` and disaggregated placement without a cloud.

    python cluster/local_cluster.py start --temp-dir /tmp/rayppo-cluster
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/rayppo-cluster/auth_token
    make submit ADDRESS=http://127.0.0.1:<dashboard port> CONFIG=configs/cluster_local.yaml \\
        ARGS="model.path=$PWD/runs/debug/sft storage_path=/tmp/rayppo-cluster/storage"
    python cluster/local_cluster.py stop --temp-dir /tmp/rayppo-cluster

The head holds ``rollout_pool`` (the rollout engines), the worker ``learner_pool`` (the learner
ranks); both carry the matching ``pool`` label too. Every port is chosen free and explicit (the
defaults, such as the dashboard agent's 52365, would collide with any other Ray on the machine),
the dashboard binds 127.0.0.1, and token authentication is on, with the token in
``<temp-dir>/auth_token``.

Each node is a ``ray start --block`` process; ``stop`` ends those processes and their
descendants only. ``ray stop`` is not used: it ends every Ray process of the user, including
other clusters on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"


@dataclass
class NodeSpec:
    """One node: what it advertises to the scheduler."""

    name: str
    num_cpus: int
    resources: dict[str, float]
    labels: dict[str, str]


# The pools configs/cluster_local.yaml asks for: engines on the head, learner ranks on the worker.
DEFAULT_NODES = (
    NodeSpec("head", 2, {"rollout_pool": 1}, {"pool": "rollout"}),
    NodeSpec("worker", 2, {"learner_pool": 1}, {"pool": "learner"}),
)


@dataclass
class LocalCluster:
    """A started cluster: where to reach it and which processes are its own."""

    temp_dir: str
    gcs_port: int
    dashboard_port: int
    auth: bool = True
    processes: list[dict] = field(default_factory=list)
    """``{"name", "pid", "start_time"}`` of every ``ray start --block`` process."""

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The ``--address`` of ``ray job submit``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token_path(self) -> str:
        return os.path.join(self.temp_dir, TOKEN_FILE)

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a process that talks to this cluster (``ray job submit``, the nodes)."""
        env = dict(os.environ if base is None else base)
        env.pop("RAY_ADDRESS", None)  # never join someone else's cluster by accident
        env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the token file
        if self.auth:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = self.token_path
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        # The job's entrypoint (`rayppo ...`) resolves through PATH on the head node.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    def auth_headers(self) -> dict[str, str]:
        if not self.auth:
            return {}
        with open(self.token_path, encoding="utf-8") as f:
            return {"Authorization": f"Bearer {f.read().strip()}"}

    def nodes(self) -> list[dict]:
        """Alive nodes as the dashboard's state API lists them (id, resources, labels)."""
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/v0/nodes?detail=1&limit=100", headers=self.auth_headers()
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = json.load(response)
        rows = payload["data"]["result"]["result"]
        return [row for row in rows if row.get("state") == "ALIVE"]

    def save(self) -> None:
        with open(os.path.join(self.temp_dir, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, temp_dir: str) -> "LocalCluster":
        path = os.path.join(temp_dir, STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return cls(**json.load(f))
        except FileNotFoundError:
            raise ValueError(f"{path}: no cluster was started with --temp-dir {temp_dir}") from None


# ------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``: with the pid it identifies one process (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start_time)`` of every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        start = _start_time(child)
        if start is not None:
            found.append((child, start))
        todo.extend(children.get(child, []))
    return found


def _alive(pid: int, start_time: str) -> bool:
    return _start_time(pid) == start_time


def _start_node(cluster: LocalCluster, spec: NodeSpec, head: bool, env: dict[str, str]) -> dict:
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    node_dir = os.path.join(cluster.temp_dir, spec.name)
    os.makedirs(node_dir, exist_ok=True)
    cmd = [
        ray_bin, "start", "--block", "--disable-usage-stats",
        f"--temp-dir={node_dir}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={spec.num_cpus}",
        "--num-gpus=0",
        f"--resources={json.dumps(spec.resources)}",
        "--labels=" + ",".join(f"{k}={v}" for k, v in spec.labels.items()),
        # Small stores: the cluster shares the machine with whatever else runs on it.
        f"--object-store-memory={512 * 1024 * 1024}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]
    if head:
        cmd += [
            "--head",
            f"--port={cluster.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={cluster.dashboard_port}",
            f"--ray-client-server-port={_free_port()}",
        ]
    else:
        cmd += [f"--address={cluster.gcs_address}"]
    log = open(os.path.join(cluster.temp_dir, f"{spec.name}.log"), "w", encoding="utf-8")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    return {"name": spec.name, "pid": proc.pid, "start_time": _start_time(proc.pid) or ""}


def start(
    temp_dir: str,
    nodes: tuple[NodeSpec, ...] = DEFAULT_NODES,
    auth: bool = True,
    timeout_s: float = 90.0,
) -> LocalCluster:
    """Start ``nodes`` (the first is the head) and wait until every one is alive."""
    temp_dir = os.path.abspath(temp_dir)
    os.makedirs(temp_dir, exist_ok=True)
    cluster = LocalCluster(temp_dir, _free_port(), _free_port(), auth)
    if auth and not os.path.exists(cluster.token_path):
        fd = os.open(cluster.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    env = cluster.client_env()
    try:
        for i, spec in enumerate(nodes):
            cluster.processes.append(_start_node(cluster, spec, head=i == 0, env=env))
            cluster.save()
            _wait_for(cluster, i + 1, timeout_s)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _wait_for(cluster: LocalCluster, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        for proc in cluster.processes:
            if not _alive(proc["pid"], proc["start_time"]):
                log = os.path.join(cluster.temp_dir, f"{proc['name']}.log")
                raise RuntimeError(f"node {proc['name']} exited while starting; see {log}")
        try:
            seen = len(cluster.nodes())
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            seen = 0  # the dashboard is not up yet
        if seen >= count:
            return
        time.sleep(1.0)
    raise RuntimeError(f"{seen} of {count} nodes alive after {timeout_s:g} s; logs in {cluster.temp_dir}")


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def raylet_pid(cluster: LocalCluster, name: str) -> int:
    """The pid of node ``name``'s raylet (killing it is how a node is lost)."""
    proc = next((p for p in cluster.processes if p["name"] == name and _alive(p["pid"], p["start_time"])), None)
    if proc is None:
        raise ValueError(f"no running node named {name!r}")
    for pid, _ in _descendants(proc["pid"]):
        if "/raylet" in _command_line(pid).split(" ", 1)[0]:
            return pid
    raise ValueError(f"node {name!r} has no raylet process")


def add_node(cluster: LocalCluster, spec: NodeSpec, timeout_s: float = 90.0) -> dict:
    """Start one more node (e.g. a replacement for a lost one) and wait until it is alive."""
    known = {n["node_id"] for n in cluster.nodes()}
    proc = _start_node(cluster, spec, head=False, env=cluster.client_env())
    cluster.processes.append(proc)
    cluster.save()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(proc["pid"], proc["start_time"]):
            raise RuntimeError(f"node {spec.name} exited while starting; see {cluster.temp_dir}/{spec.name}.log")
        try:
            if any(n["node_id"] not in known for n in cluster.nodes()):
                return proc
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"node {spec.name} not alive after {timeout_s:g} s; logs in {cluster.temp_dir}")


def stop(cluster: LocalCluster, grace_s: float = 15.0) -> None:
    """End the cluster's own processes: SIGTERM to each ``ray start --block`` (which shuts its
    node down), then SIGKILL to anything of theirs still running after ``grace_s``."""
    owned: list[tuple[int, str]] = []
    for proc in reversed(cluster.processes):  # workers first, the head last
        pid, start_time = proc["pid"], proc["start_time"]
        if not _alive(pid, start_time):
            continue
        owned += [(pid, start_time)] + _descendants(pid)
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in owned):
        time.sleep(0.5)
    for pid, start_time in owned:
        if _alive(pid, start_time):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    cluster.processes.clear()
    cluster.save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--temp-dir", required=True, help="Ray's temp dir; keep it short (socket paths)")
    parser.add_argument("--no-auth", action="store_true", help="start without token authentication")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(LocalCluster.load(args.temp_dir))
        print(f"stopped the cluster in {args.temp_dir}")
        return 0
    cluster = start(args.temp_dir, auth=not args.no_auth)
    print(f"cluster up: {len(DEFAULT_NODES)} nodes, GCS {cluster.gcs_address}")
    print(f"submit to:  {cluster.dashboard_url}")
    if cluster.auth:
        print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
