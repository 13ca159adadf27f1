"""The ``http`` source against real uvicorn servers in this process (retries, timeouts, the
concurrency limit, a server that is down or answers garbage, the circuit breaker), and the
``serve-reward`` app with token auth.

Every assertion is on what the server counted (requests, requests at once) and on the order of
events, never on wall time: CI runs these on a loaded 2-core machine."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Optional

import httpx
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.rewards import RewardSet, ScoreRequest
from pipeline.rewards.http import Breaker
from pipeline.stages.serve_reward import build_app, resolve_token


@contextlib.contextmanager
def serving(app):
    """``app`` on a free 127.0.0.1 port in a background thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Backend:
    """A reward server with knobs: fails the first ``fail_first`` calls with 500, wants a
    bearer ``token`` (401 otherwise), sleeps (until ``release`` is set), answers the wrong number
    of scores, and records how many requests it received and how many ran at once."""

    def __init__(self):
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.fail_first = 0
        self.token: Optional[str] = None
        self.sleep_s = 0.0
        self.release = threading.Event()
        self.wrong_length = False
        self.lock = threading.Lock()

    def wait_for_calls(self, n: int) -> None:
        """Until the server has received ``n`` requests (a request the client gave up on may
        reach the handler a moment after), with a deadline."""
        deadline = time.monotonic() + 20
        while self.calls < n:
            assert time.monotonic() < deadline, f"the server received {self.calls} requests, expected {n}"
            time.sleep(0.01)

    def app(self):
        from fastapi import Body, FastAPI, Header, HTTPException

        app = FastAPI()

        @app.post("/score")
        def score(body: dict = Body(...), authorization: Optional[str] = Header(default=None)) -> dict:
            with self.lock:
                self.calls += 1
                call = self.calls
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            try:
                self.release.wait(self.sleep_s)
                if self.token is not None and authorization != f"Bearer {self.token}":
                    raise HTTPException(401, "invalid or missing bearer token")
                if call <= self.fail_first:
                    raise HTTPException(500, "warming up")
                samples = body["samples"]
                scores = [float(len(s["completion"])) if s["completion"] != "null" else None for s in samples]
                if self.wrong_length:
                    scores = scores[:-1]
                return {"scores": scores, "info": [{"chars": len(s["completion"])} for s in samples]}
            finally:
                with self.lock:
                    self.active -= 1

        return app


@pytest.fixture
def backend():
    b = Backend()
    with serving(b.app()) as url:
        b.url = url
        try:
            yield b
        finally:
            b.release.set()  # handlers still sleeping return now, so the server can stop


def http_rewards(url: str, **settings) -> RewardSet:
    entry = {"kind": "http", "name": "api", "url": url, "backoff_s": 0.01, **settings}
    return RewardSet.from_config(load_config(None, [f"reward.sources=[{entry!r}]"]))


def request(completions) -> ScoreRequest:
    return ScoreRequest([[{"role": "user", "content": "hi"}] for _ in completions], list(completions))


def test_scores_info_and_null(backend):
    rs = http_rewards(backend.url + "/score", batch_size=2)
    scores, metrics = rs.score(request(["a", "bbb", "null", "cc"]))
    np.testing.assert_array_equal(scores, [1.0, 3.0, np.nan, 2.0])
    assert backend.calls == 2  # two batches of two
    assert metrics["reward/api/failed_requests"] == 0 and metrics["reward/api/not_finite"] == 1
    assert metrics["reward/api/info/chars"] == pytest.approx((1 + 3 + 4 + 2) / 4)
    rs.shutdown()


def test_retries_with_backoff_then_succeeds(backend):
    backend.fail_first = 2
    rs = http_rewards(backend.url + "/score", max_retries=3)
    scores, metrics = rs.score(request(["ab"]))
    assert scores.tolist() == [2.0] and metrics["reward/api/retries"] == 2
    assert metrics["reward/api/failed_requests"] == 0 and backend.calls == 3
    rs.shutdown()


def test_server_500_beyond_retries_is_counted(backend):
    backend.fail_first = 10
    rs = http_rewards(backend.url + "/score", max_retries=1, batch_size=2)
    scores, metrics = rs.score(request(["a", "b", "c"]))
    assert np.isnan(scores).all()
    assert metrics["reward/api/failed_requests"] == 2 and metrics["reward/api/request_failed"] == 3
    assert backend.calls == 4  # two requests, two attempts each
    rs.shutdown()


def test_timeout_is_bounded_and_counted(backend):
    backend.sleep_s = 60  # until the test ends
    rs = http_rewards(backend.url + "/score", timeout_s=0.2, max_retries=1)
    scores, metrics = rs.score(request(["a", "b"]))
    assert np.isnan(scores).all() and metrics["reward/api/timeout"] == 2
    assert metrics["reward/api/failed_requests"] == 1 and metrics["reward/api/retries"] == 1
    backend.wait_for_calls(2)
    # Both attempts are still being worked on: the source gave up without waiting for them.
    assert backend.calls == 2 and backend.active == 2
    rs.shutdown()


def test_concurrency_limit_holds(backend):
    backend.sleep_s = 0.2
    rs = http_rewards(backend.url + "/score", batch_size=1, max_concurrency=2)
    scores, _ = rs.score(request(["a"] * 6))
    assert scores.tolist() == [1.0] * 6
    assert backend.calls == 6 and backend.max_active == 2  # six requests, never more than two at once
    rs.shutdown()


def test_wrong_number_of_scores_is_a_bad_response_not_retried(backend):
    backend.wrong_length = True
    rs = http_rewards(backend.url + "/score", max_retries=3)
    scores, metrics = rs.score(request(["a", "b"]))
    assert np.isnan(scores).all() and metrics["reward/api/bad_response"] == 2 and backend.calls == 1
    rs.shutdown()


def test_server_down_is_counted_not_a_hang():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rs = http_rewards(f"http://127.0.0.1:{port}/score", max_retries=2, timeout_s=1)
    scores, metrics = rs.score(request(["a"]))
    assert np.isnan(scores).all() and metrics["reward/api/failed_requests"] == 1
    assert metrics["reward/api/retries"] == 2 and metrics["reward/api/request_failed"] == 1
    rs.shutdown()


# ---------------------------------------------------------------------------- circuit breaker


def wrong_token_rewards(backend, tmp_path, **settings) -> RewardSet:
    backend.token = "right"
    (tmp_path / "token").write_text("wrong")
    return http_rewards(backend.url + "/score", token_file=str(tmp_path / "token"), batch_size=1, **settings)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_wrong_token_opens_the_breaker_and_the_rest_of_the_batch_is_not_sent(backend, tmp_path, concurrency):
    rs = wrong_token_rewards(backend, tmp_path, breaker_failures=3, max_concurrency=concurrency)
    scores, metrics = rs.score(request(["a"] * 20))
    assert np.isnan(scores).all()
    # The third 401 opens it; requests already in flight then (at most concurrency - 1) still
    # count, every later one fails without reaching the server.
    sent = backend.calls
    assert 3 <= sent <= 3 + concurrency - 1
    if concurrency == 1:
        assert sent == 3
    assert metrics["reward/api/request_failed"] == metrics["reward/api/failed_requests"] == sent
    assert metrics["reward/api/circuit_open"] == 20 - sent
    assert metrics["reward/api/breaker_open"] == 1 and metrics["reward/api/retries"] == 0  # 401 is not retried
    first = rs.last_results[0].first_problem
    assert first.startswith("sample 0 request failed: HTTP 401") and "invalid or missing bearer token" in first
    [problem] = rs.problems()
    assert problem.startswith(f"source 'api' (http): {sent} request_failed, {20 - sent} circuit_open; first: ")
    assert "HTTP 401" in problem
    rs.shutdown()


def test_slow_server_costs_breaker_failures_requests_not_the_whole_batch(backend):
    backend.sleep_s = 60  # longer than any attempt: every request times out
    rs = http_rewards(backend.url + "/score", timeout_s=0.2, max_retries=1, batch_size=1, max_concurrency=1,
                      breaker_failures=2)
    scores, metrics = rs.score(request(["a"] * 8))
    assert np.isnan(scores).all()
    assert metrics["reward/api/timeout"] == 2 and metrics["reward/api/circuit_open"] == 6
    assert metrics["reward/api/failed_requests"] == 2 and metrics["reward/api/breaker_open"] == 1
    backend.wait_for_calls(4)  # two requests, two attempts each; every future is done, none follows
    assert backend.calls == 4
    assert "timed out after timeout_s=0.2" in rs.problems()[0]
    rs.shutdown()


def test_next_batch_probes_once_and_a_healthy_server_closes_the_breaker(backend, tmp_path):
    rs = wrong_token_rewards(backend, tmp_path, breaker_failures=2, max_concurrency=2)
    rs.score(request(["a"] * 6))
    assert rs.sources[0].breaker.is_open
    # Still failing: one probe request goes out (the other thread waits for it), the rest not.
    sent = backend.calls
    scores, metrics = rs.score(request(["a"] * 6))
    assert backend.calls == sent + 1 and np.isnan(scores).all()
    assert metrics["reward/api/request_failed"] == 1 and metrics["reward/api/circuit_open"] == 5
    assert metrics["reward/api/breaker_open"] == 1
    assert "HTTP 401" in rs.last_results[0].first_problem  # the probe's own failure comes first
    assert rs.sources[0].breaker.cause.startswith("its probe request failed")
    # The server accepts the token again: the probe succeeds, the breaker closes, all is scored.
    backend.token = None
    scores, metrics = rs.score(request(["ab"] * 6))
    assert scores.tolist() == [2.0] * 6 and backend.calls == sent + 1 + 6
    assert metrics["reward/api/breaker_open"] == 0 and metrics["reward/api/unscorable"] == 0
    assert rs.problems() == []
    rs.shutdown()


def test_breaker_counts_consecutive_failures_only():
    breaker = Breaker(3, "api")
    for outcome in ("HTTP 500", "HTTP 500", None, "HTTP 500", "HTTP 500"):
        assert breaker.admit()
        breaker.record(outcome)
    assert not breaker.is_open  # the success in between reset the count
    breaker.record("HTTP 503")
    assert breaker.is_open and not breaker.admit()
    assert breaker.refusal().reason == "circuit_open" and "last: HTTP 503" in breaker.refusal().problem
    off = Breaker(0, "api")
    for _ in range(10):
        off.record("HTTP 500")
    assert off.admit() and not off.is_open


def test_breaker_failures_is_validated():
    with pytest.raises(ValueError, match=r"reward\.sources\[0\]\.breaker_failures \(source 'api'\): must be >= 0"):
        http_rewards("http://127.0.0.1:1/score", breaker_failures=-1)


# ---------------------------------------------------------------------------- serve-reward


def served_rewards():
    cfg = load_config(None, [
        "reward.sources=[{kind: rule, name: exact}, {kind: similarity, metric: chrf, weight: 0.5}]",
    ])
    return RewardSet.from_config(cfg)


def test_serve_reward_needs_a_token_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYPPO_REWARD_TOKEN", raising=False)
    cfg = load_config(None)
    with pytest.raises(ValueError, match=r"reward\.server: no token configured"):
        resolve_token(cfg.reward.server)
    cfg.reward.server.allow_unauthenticated = True
    assert resolve_token(cfg.reward.server) is None
    (tmp_path / "token").write_text("  s3cret\n")
    cfg.reward.server.token_file = str(tmp_path / "token")
    assert resolve_token(cfg.reward.server) == "s3cret"
    monkeypatch.setenv("RAYPPO_REWARD_TOKEN", "from-env")
    cfg.reward.server.token_file = None
    assert resolve_token(cfg.reward.server) == "from-env"


def test_serve_reward_app_scores_with_token_auth(tmp_path, monkeypatch):
    rs = served_rewards()
    with serving(build_app(rs, "s3cret", max_batch=3)) as url:
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ok" and [s["name"] for s in health["sources"]] == ["exact", "chrf"]
        body = {"samples": [
            {"prompt": "Compute 1+1.", "completion": "2", "answer": "2", "reference": "2"},
            {"messages": [{"role": "user", "content": "Compute 2+2."}], "completion": "5", "answer": "4", "references": ["4"]},
            {"prompt": "Compute 3+3.", "completion": "6"},  # no answer: the verifier cannot score it
        ]}
        assert httpx.post(url + "/score", json=body).status_code == 401
        assert httpx.post(url + "/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        reply = httpx.post(url + "/score", json=body, headers=auth).json()
        assert reply["scores"][0] == pytest.approx(1.0 + 0.5 * 1.0)
        assert reply["scores"][1] == pytest.approx(0.0 + 0.0)
        assert reply["scores"][2] is None
        assert reply["info"][0] == {"exact": 1.0, "chrf": pytest.approx(1.0)}
        assert reply["info"][2]["exact"] is None and reply["info"][2]["chrf"] is None
        too_many = {"samples": body["samples"] * 2}
        assert httpx.post(url + "/score", json=too_many, headers=auth).status_code == 413
        bad = httpx.post(url + "/score", json={"samples": [{"prompt": "x"}]}, headers=auth)
        assert bad.status_code == 422 and "samples[0].completion" in bad.text

        # The http source speaks the same schema: one job scoring through another's server.
        (tmp_path / "token").write_text("s3cret")
        client = http_rewards(url + "/score", token_file=str(tmp_path / "token"))
        req = ScoreRequest(
            [[{"role": "user", "content": "Compute 1+1."}]] * 2, ["2", "3"], references=[["2"], ["2"]], answers=["2", "2"]
        )
        scores, metrics = client.score(req)
        assert scores.tolist() == pytest.approx([1.5, 0.0])
        assert metrics["reward/api/info/exact"] == pytest.approx(0.5)
        client.shutdown()
        unauthorised = http_rewards(url + "/score")
        scores, metrics = unauthorised.score(req)
        assert np.isnan(scores).all() and metrics["reward/api/failed_requests"] == 1
        unauthorised.shutdown()


def test_serve_reward_command_refuses_to_start_without_a_token():
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "RAYPPO_REWARD_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve-reward", "configs/debug.yaml"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "reward.server: no token configured (set $RAYPPO_REWARD_TOKEN" in proc.stderr
