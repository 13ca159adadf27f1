"""``kind: http``: a remote reward server (the schema is in ``docs/rewards.md``).

Request (POST, JSON, one per ``batch_size`` samples)::

    {"samples": [{"messages": [...], "prompt": str, "completion": str,
                  "references": [str, ...], "answer": str | null, "metadata": {...}}, ...]}

Response: ``{"scores": [number | null, ...], "info": [object | null, ...]}`` (``info``
optional), one entry per sample in order; ``null`` marks a sample the server could not score.

At most ``max_concurrency`` requests are in flight; each attempt has ``timeout_s``; connection
errors, timeouts, 429 and 5xx are retried up to ``max_retries`` times with exponential backoff.
A request that still fails makes its samples unscorable and counts in ``failed_requests``; a
deadline on the whole batch means a server that never answers cannot hang the step.

``breaker_failures`` consecutive failed requests open a circuit breaker (:class:`Breaker`): the
batch's requests not yet sent fail at once (``circuit_open``) instead of each waiting out its
timeouts and retries, and the next batch probes the server with one request first.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Optional

from pipeline.rewards.base import ResultBuilder, ScoreRequest, SourceResult, as_score

logger = logging.getLogger("pipeline.rewards")


class RequestFailed(Exception):
    def __init__(self, reason: str, problem: str, attempts: int):
        super().__init__(problem)
        self.reason, self.problem, self.attempts = reason, problem, attempts
        self.at = time.monotonic()


class Breaker:
    """Consecutive failed requests of one source, shared by the threads of its pool.

    ``closed``: requests are sent. ``threshold`` failures in a row open it (``open``): requests
    not yet sent fail at once, and requests between two attempts stop retrying. The next batch
    makes it ``half_open``: the first request to go is a probe (``probing``) and the others wait
    for its outcome; a success closes the breaker, a failure opens it again. Any success closes
    it. ``threshold`` 0: never opens.
    """

    def __init__(self, threshold: int, source: str):
        self.threshold = threshold
        self.source = source
        self.state = "closed"
        self.failures = 0
        self.cause = ""
        """Why it opened, with the last failure (the real cause: an HTTP 401, a timeout)."""
        self._changed = threading.Condition()

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def next_batch(self) -> None:
        with self._changed:
            if self.state == "open":
                self.state = "half_open"

    def admit(self) -> bool:
        """Whether a request may be sent now; waits while a probe is out."""
        with self._changed:
            while self.state == "probing":
                self._changed.wait()
            if self.state == "open":
                return False
            if self.state == "half_open":
                self.state = "probing"
            return True

    def record(self, failure: Optional[str]) -> None:
        """The outcome of a request that was sent: ``None`` for a reply, else its problem."""
        with self._changed:
            if failure is None:
                if self.state != "closed":
                    logger.info("reward source %r: a request succeeded; circuit breaker closed", self.source)
                self.state, self.failures = "closed", 0
            else:
                self.failures += 1
                probe_failed = self.state == "probing"
                if probe_failed or (self.threshold and self.failures >= self.threshold and self.state != "open"):
                    what = "its probe request failed" if probe_failed else f"{self.failures} consecutive failed requests"
                    self.state, self.cause = "open", f"{what} (breaker_failures={self.threshold}); last: {failure}"
                    logger.warning("reward source %r: circuit breaker open: %s", self.source, self.cause)
            self._changed.notify_all()

    def refusal(self) -> RequestFailed:
        return RequestFailed("circuit_open", f"not sent: circuit breaker open after {self.cause}", 0)


def token_from(token_env: Optional[str], token_file: Optional[str], field: str, owner: str = "") -> Optional[str]:
    """A bearer token from ``token_file`` (first) or the environment variable ``token_env``;
    ``None`` when neither is set. A file that cannot be read, or is empty, raises a
    ``ValueError`` naming the setting (``field`` + ``.token_file``, then ``owner``), and so does a
    named variable that is unset; the reward server's own token is read the same way."""
    if token_file:
        try:
            with open(os.path.expanduser(token_file), encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ValueError(f"{field}.token_file{owner}: cannot read {token_file!r} ({e.strerror or e})") from None
        if not token:
            raise ValueError(f"{field}.token_file{owner}: {token_file!r} is empty")
        return token
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ValueError(f"{field}.token_env{owner}: environment variable {token_env!r} is not set")
        return token
    return None


def read_token(spec, index: int) -> Optional[str]:
    """The bearer token a source sends, from its environment variable or file."""
    return token_from(spec.token_env, spec.token_file, f"reward.sources[{index}]", f" (source {spec.name!r})")


def request_rows(request: ScoreRequest) -> list[dict]:
    """The ``samples`` of the request body."""
    return [
        {
            "messages": request.messages[i],
            "prompt": request.prompts[i],
            "completion": request.completions[i],
            "references": list(request.references[i]),
            "answer": request.answers[i],
            "metadata": request.metadata[i],
        }
        for i in range(len(request))
    ]


def _parse_reply(body: Any, n: int) -> tuple[list[Optional[float]], list[dict]]:
    if not isinstance(body, dict) or not isinstance(body.get("scores"), list):
        raise ValueError("the reply is not an object with a 'scores' list")
    scores = body["scores"]
    if len(scores) != n:
        raise ValueError(f"the reply has {len(scores)} scores for {n} samples")
    info = body.get("info") or [None] * n
    if not isinstance(info, list) or len(info) != n:
        raise ValueError("'info' must be a list with one entry per sample")
    return [None if s is None else as_score(s) for s in scores], [i if isinstance(i, dict) else {} for i in info]


class HttpSource:
    kind = "http"

    def __init__(self, spec, token: Optional[str]):
        import httpx

        self.spec = spec
        self.name, self.weight = spec.name, spec.weight
        self.actors: list = []
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(spec.timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=spec.max_concurrency),
        )
        self.pool = ThreadPoolExecutor(max_workers=spec.max_concurrency, thread_name_prefix=f"reward-{spec.name}")
        self.breaker = Breaker(spec.breaker_failures, spec.name)

    def start(self, placement=None) -> None:
        pass

    def _attempt_bound(self) -> float:
        """Longest one request can take with every retry (a bound, for the batch deadline)."""
        s = self.spec
        waits = sum(min(s.backoff_s * 2**k, s.max_backoff_s) for k in range(s.max_retries))
        # httpx's timeout bounds each phase (connect, write, read), not their sum.
        return (s.max_retries + 1) * 3 * s.timeout_s + waits

    def _post(self, rows: list[dict]) -> tuple[list[Optional[float]], list[dict], int, float]:
        """(scores, info, attempts, time of the reply) of one request; ``RequestFailed`` after
        the last attempt, or at once while the breaker is open."""
        if not self.breaker.admit():  # a request queued behind the failures that opened it
            raise self.breaker.refusal()
        failure: Optional[str] = "the request raised"  # so that threads waiting on a probe go on
        try:
            reply = self._send(rows)
            failure = None
            return reply
        except RequestFailed as e:
            failure = e.problem
            raise
        finally:
            self.breaker.record(failure)

    def _send(self, rows: list[dict]) -> tuple[list[Optional[float]], list[dict], int, float]:
        import httpx

        s, problem, reason = self.spec, "", "request_failed"
        for attempt in range(s.max_retries + 1):
            if attempt:
                self._stop_retrying_if_open(reason, problem, attempt)
                time.sleep(min(s.backoff_s * 2 ** (attempt - 1), s.max_backoff_s))
                self._stop_retrying_if_open(reason, problem, attempt)
            try:
                reply = self.client.post(s.url, json={"samples": rows})
            except httpx.TimeoutException as e:
                problem, reason = f"timed out after timeout_s={s.timeout_s:g} ({type(e).__name__})", "timeout"
                continue
            except httpx.HTTPError as e:  # connection refused, reset, DNS ...
                problem, reason = f"{type(e).__name__}: {e}", "request_failed"
                continue
            if reply.status_code == 429 or reply.status_code >= 500:
                problem, reason = f"HTTP {reply.status_code}: {reply.text[:200]}", "request_failed"
                continue
            if reply.status_code >= 400:
                raise RequestFailed("request_failed", f"HTTP {reply.status_code}: {reply.text[:200]}", attempt + 1)
            try:
                scores, info = _parse_reply(reply.json(), len(rows))
            except ValueError as e:  # includes JSON decoding errors
                raise RequestFailed("bad_response", f"bad reply from {s.url}: {e}", attempt + 1) from None
            return scores, info, attempt + 1, time.monotonic()
        raise RequestFailed(reason, f"{problem} (after {s.max_retries + 1} attempts)", s.max_retries + 1)

    def _stop_retrying_if_open(self, reason: str, problem: str, attempts: int) -> None:
        """Other requests opened the breaker: this one fails with its own problem, now."""
        if self.breaker.is_open:
            raise RequestFailed(reason, f"{problem} (retries stopped after attempt {attempts}: circuit breaker open)",
                                attempts)

    def submit(self, request: ScoreRequest):
        self.breaker.next_batch()  # an open breaker lets one probe request through
        rows = request_rows(request)
        size = self.spec.batch_size
        chunks = [list(range(lo, min(lo + size, len(rows)))) for lo in range(0, len(rows), size)]
        futures = [self.pool.submit(self._post, [rows[i] for i in chunk]) for chunk in chunks]
        return futures, chunks, len(rows), time.monotonic()

    def collect(self, handle) -> SourceResult:
        futures, chunks, n, submitted = handle
        builder = ResultBuilder(n)
        builder.count("failed_requests", 0.0)
        builder.count("breaker_open", 0.0)
        waves = math.ceil(len(chunks) / self.spec.max_concurrency) if chunks else 0
        deadline = submitted + waves * self._attempt_bound() + 5.0
        info_sums: dict[str, list[float]] = {}
        finished = submitted
        for future, chunk in zip(futures, chunks):
            try:
                scores, info, attempts, replied = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                future.cancel()
                finished = time.monotonic()
                builder.count("failed_requests")
                for i in chunk:
                    builder.fail(i, "timeout", f"no reply from {self.spec.url} before the batch deadline")
                continue
            except RequestFailed as e:
                finished = max(finished, e.at)
                sent = e.attempts > 0  # not sent: refused by the open breaker
                builder.count("failed_requests", float(sent))
                builder.count("retries", max(0, e.attempts - 1))
                for i in chunk:
                    builder.fail(i, e.reason, f"request failed: {e.problem}" if sent else e.problem)
                continue
            builder.count("retries", attempts - 1)
            finished = max(finished, replied)
            for i, score, extra in zip(chunk, scores, info):
                if score is None:
                    builder.fail(i, "not_finite", "the server returned no finite score")
                else:
                    builder.set(i, score)
                for key, value in extra.items():
                    if as_score(value) is not None:
                        info_sums.setdefault(key, []).append(float(value))
        for key, values in info_sums.items():
            builder.count(f"info/{key}", sum(values) / len(values))
        builder.count("breaker_open", float(self.breaker.is_open))
        # The source's own time: until its last reply, not until the caller came to collect.
        out = builder.result(finished - submitted)
        if out.reasons:
            logger.warning("reward source %r could not score %d of %d samples %s; first: %s",
                           self.name, out.unscorable_count, n, out.reasons, out.first_problem)
        return out

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
