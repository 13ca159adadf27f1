"""Fixtures of the feedback tests: a fresh database with raters and tasks, a real server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from pipeline.feedback.rating_tasks import NewItem, add_items, create_task
from pipeline.feedback.storage import Database, add_rater
from tests.integration.conftest import ray_session, tiny_config  # noqa: F401 - shared fixtures (the loop)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compare_items(n: int, model_a: str = "new", model_b: str = "old") -> list[NewItem]:
    return [
        NewItem([{"role": "user", "content": f"question {i}"}], f"answer {i} from {model_a}",
                f"answer {i} from {model_b}", model_a, model_b, source=f"test row {i}")
        for i in range(n)
    ]


def rate_items(n: int) -> list[NewItem]:
    return [NewItem([{"role": "user", "content": f"question {i}"}], f"reply {i}", source=f"test row {i}")
            for i in range(n)]


@pytest.fixture
def db(tmp_path) -> Database:
    database = Database(str(tmp_path / "feedback.db"))
    yield database
    database.dispose()


@pytest.fixture
def raters(db) -> dict[str, str]:
    """name -> token of three raters."""
    return {name: add_rater(db, name) for name in ("ann", "bob", "cy")}


@pytest.fixture
def compare_task(db) -> int:
    task_id = create_task(db, "pairs", "compare")
    add_items(db, task_id, compare_items(6))
    return task_id


@pytest.fixture
def rate_task(db) -> int:
    task_id = create_task(db, "scores", "rate")
    add_items(db, task_id, rate_items(4))
    return task_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``rayppo feedback serve`` as a real process (uvicorn), started and stopped by tests."""

    def __init__(self, db_path: str, workers: int = 1):
        self.db_path = db_path
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "LiveServer":
        cmd = [sys.executable, "-m", "pipeline.cli", "feedback", "serve", "--db", self.db_path,
               "--port", str(self.port), "--workers", str(self.workers), "--chat-engine", "hf"]
        # A process group of its own, so a kill reaches uvicorn's worker processes too.
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"waited {timeout:g} s for {self.url}/login to answer 200; the server's output ends "
                           f"with:\n{self.proc.stdout.read().decode()[-2000:]}")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@pytest.fixture
def live_server(db):
    servers = []

    def start(workers: int = 1) -> LiveServer:
        server = LiveServer(db.url.split(":///", 1)[1], workers).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
