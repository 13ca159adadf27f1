"""What every reward source shares: the batch it scores, what it returns, how it is driven.

A source scores a :class:`ScoreRequest` and returns a :class:`SourceResult`: one float per
sample, NaN where it could not score that sample, and a count of the reasons why. A source never
raises for one bad sample or one failed remote call; it raises only for a programming error
(wrong lengths) or a configuration error found before any work starts.

Sources are driven in two halves so that several of them (and the learner's reference pass)
work at the same time: ``submit`` starts the work and returns at once, ``collect`` waits for it.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np


@dataclass
class ScoreRequest:
    """One batch of samples to score; every list has one entry per sample."""

    messages: list[list[dict]]
    """The conversation before the reply, per sample."""
    completions: list[str]
    """The reply text, per sample."""
    references: list[list[str]] = field(default_factory=list)
    """Reference replies per sample (may be empty); an empty list here means none for any."""
    answers: list[Optional[str]] = field(default_factory=list)
    """The row's answer (rule rewards); an empty list here means none for any."""
    metadata: list[dict] = field(default_factory=list)
    """Free-form per-row data; an empty list here means ``{}`` for every sample."""

    def __post_init__(self) -> None:
        n = len(self.completions)
        if not self.references:
            self.references = [[] for _ in range(n)]
        if not self.answers:
            self.answers = [None] * n
        if not self.metadata:
            self.metadata = [{} for _ in range(n)]
        lengths = {
            "messages": len(self.messages),
            "references": len(self.references),
            "answers": len(self.answers),
            "metadata": len(self.metadata),
        }
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(
                f"ScoreRequest: {n} completions but "
                + ", ".join(f"{v} {k}" for k, v in wrong.items())
                + "; every field needs one entry per sample"
            )

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def prompts(self) -> list[str]:
        """The last user message of each sample's conversation ("" when there is none)."""
        return [last_user_text(m) for m in self.messages]

    def subset(self, indices) -> "ScoreRequest":
        idx = [int(i) for i in indices]
        return ScoreRequest(
            messages=[self.messages[i] for i in idx],
            completions=[self.completions[i] for i in idx],
            references=[self.references[i] for i in idx],
            answers=[self.answers[i] for i in idx],
            metadata=[self.metadata[i] for i in idx],
        )


def last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content", "")
    return ""


@dataclass
class SourceResult:
    """One source's scores for a request."""

    scores: np.ndarray
    """float64, one per sample; NaN = unscorable."""
    reasons: dict[str, int] = field(default_factory=dict)
    """Why samples are unscorable, counted per reason (sums to the number of NaNs)."""
    counters: dict[str, float] = field(default_factory=dict)
    """Other figures the source reports (e.g. ``failed_requests``, ``truncated``)."""
    seconds: float = 0.0
    """Time the source spent on the request (its own work, not the wait of the caller)."""
    first_problem: Optional[str] = None
    """A sentence describing the first unscorable sample, for the log."""

    @classmethod
    def unscorable(cls, n: int, reason: str, problem: str, seconds: float = 0.0) -> "SourceResult":
        return cls(np.full(n, np.nan), {reason: n} if n else {}, {}, seconds, problem)

    @property
    def unscorable_count(self) -> int:
        return int(np.isnan(self.scores).sum())


def as_score(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None when it is not one (strings are not numbers here)."""
    if isinstance(value, (str, bytes)) or not hasattr(type(value), "__float__"):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


class ResultBuilder:
    """Collects per-sample scores and the reasons for the missing ones."""

    def __init__(self, n: int):
        self.scores = np.full(n, np.nan)
        self.reasons: dict[str, int] = {}
        self.counters: dict[str, float] = {}
        self.first_problem: Optional[str] = None

    def set(self, i: int, score: float) -> None:
        self.scores[i] = score

    def fail(self, i: int, reason: str, problem: str) -> None:
        self.scores[i] = np.nan
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.first_problem is None:
            self.first_problem = f"sample {i} {problem}"

    def count(self, key: str, amount: float = 1.0) -> None:
        self.counters[key] = self.counters.get(key, 0.0) + amount

    def result(self, seconds: float) -> SourceResult:
        return SourceResult(self.scores, self.reasons, self.counters, seconds, self.first_problem)


class RewardSource(Protocol):
    """What :class:`pipeline.rewards.RewardSet` needs of a source."""

    kind: str
    """``rule``, ``model``, ``judge``, ``http`` or ``similarity``."""
    name: str
    weight: float

    def start(self, placement=None) -> None:
        """Start what the source runs on (actors); a no-op for in-process sources."""

    def submit(self, request: ScoreRequest) -> Any:
        """Start scoring and return a handle at once."""

    def collect(self, handle: Any) -> SourceResult:
        """Wait for the handle's scores; never raises for a sample or a remote failure."""

    def shutdown(self) -> None:
        """Release actors, threads and connections."""


class LocalSource:
    """A source that scores in this process, on a thread of its own, so its work overlaps the
    driver's wait for other roles. Subclasses implement :meth:`score_batch`.

    Batches of one source run one at a time, in order (a user's function need not be
    thread-safe). With ``timeout_s`` a batch that runs longer is given up: its samples are
    unscorable (``timeout``) and later batches no longer wait behind it. The threads are daemons,
    so a function that never returns cannot keep the process alive either.
    """

    def __init__(self, name: str, weight: float, timeout_s: Optional[float] = None):
        self.actors: list = []  # in-process: none
        self.name = name
        self.weight = weight
        self.timeout_s = timeout_s
        self._turn = threading.Lock()  # held by the batch that is running

    def score_batch(self, request: ScoreRequest) -> SourceResult:
        raise NotImplementedError

    def start(self, placement=None) -> None:
        pass

    def _run(self, request: ScoreRequest, future: Future, turn: threading.Lock) -> None:
        with turn:
            if not future.set_running_or_notify_cancel():
                return
            start = time.perf_counter()
            try:
                result = self.score_batch(request)
                result.seconds = time.perf_counter() - start
                future.set_result(result)
            except BaseException as e:  # handed to collect(), which turns it into unscorable samples
                future.set_exception(e)

    def submit(self, request: ScoreRequest) -> tuple[Future, int, float]:
        future: Future = Future()
        thread = threading.Thread(target=self._run, args=(request, future, self._turn), daemon=True,
                                  name=f"reward-{self.name}")
        thread.start()
        return future, len(request), time.monotonic()

    def collect(self, handle: tuple[Future, int, float]) -> SourceResult:
        future, n, submitted = handle
        remaining = None if self.timeout_s is None else max(0.0, submitted + self.timeout_s - time.monotonic())
        try:
            return future.result(timeout=remaining)
        except FutureTimeout:
            future.cancel()
            self._turn = threading.Lock()  # the stuck batch may never return; later ones go on
            return SourceResult.unscorable(
                n, "timeout", f"source {self.name!r} took longer than timeout_s={self.timeout_s:g}", self.timeout_s or 0.0
            )
        except Exception as e:  # score_batch itself broke: every sample unscorable, not a crash
            return SourceResult.unscorable(n, "raised", f"{type(e).__name__}: {e}")

    def shutdown(self) -> None:
        pass
