"""How :mod:`pipeline.envs.base` calls an environment and counts what happened.

:class:`EnvCaller` runs an environment's methods, whether they are plain or ``async``, under
``env.step_timeout_s``, from synchronous or asynchronous code: plain methods on a small thread
pool (a slow one never blocks the event loop), coroutines on the caller's loop or, from
synchronous code, on a private loop thread. :class:`EnvStats` holds the ``env/*`` counters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from typing import Any, Callable


# ---------------------------------------------------------------------------------------------
# Counters


class EnvStats:
    """Counters of one environment's calls, read (and reset) as ``env/*`` metrics."""

    def __init__(self):
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.conversations = 0
        self.steps = 0
        self.unscorable = 0
        self.errors = 0
        self.timeouts = 0
        self.bad_returns = 0
        self.truncated = 0
        self.seconds = 0.0
        self.metric_sums: dict[str, float] = {}
        self.metric_counts: dict[str, int] = {}

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, amount in counts.items():
                setattr(self, name, getattr(self, name) + amount)

    def add_metrics(self, metrics: dict) -> None:
        with self._lock:
            for name, value in metrics.items():
                self.metric_sums[name] = self.metric_sums.get(name, 0.0) + float(value)
                self.metric_counts[name] = self.metric_counts.get(name, 0) + 1

    def pop(self) -> dict[str, float]:
        """``env/conversations``, ``env/steps``, ``env/unscorable`` (conversations), ``env/errors``
        (exceptions), ``env/timeouts``, ``env/bad_returns``, ``env/truncated``,
        ``env/step_seconds`` (mean per call) and the averaged ``info["metrics"]``; then zero."""
        with self._lock:
            calls = self.conversations + self.steps
            out = {
                "env/conversations": float(self.conversations),
                "env/steps": float(self.steps),
                "env/unscorable": float(self.unscorable),
                "env/errors": float(self.errors),
                "env/timeouts": float(self.timeouts),
                "env/bad_returns": float(self.bad_returns),
                "env/truncated": float(self.truncated),
                "env/step_seconds": self.seconds / calls if calls else 0.0,
            }
            for name, total in self.metric_sums.items():
                out[f"env/{name}"] = total / self.metric_counts[name]
            self._clear()
        return out


# ---------------------------------------------------------------------------------------------
# Calling an environment: sync or async, with a timeout


class EnvCaller:
    """Runs an environment's methods, sync or async, under a timeout, from sync or async code."""

    def __init__(self, threads: int, timeout_s: float):
        self.timeout_s = timeout_s
        self._threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="rayppo-env")
            return self._pool

    async def acall(self, fn: Callable, *args) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await asyncio.wait_for(fn(*args), self.timeout_s)
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self.pool(), fn, *args), self.timeout_s)

    def call(self, fn: Callable, *args) -> Any:
        """The same from synchronous code (the Gymnasium adapter, trial steps, tests)."""
        if not inspect.iscoroutinefunction(fn):
            future = self.pool().submit(fn, *args)
        else:
            future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(fn(*args), self.timeout_s), self._event_loop())
        try:
            return future.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise asyncio.TimeoutError() from None

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        # One private loop in a daemon thread, so sync callers can await async environments even
        # when they are themselves called from inside a running loop.
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=self._loop.run_forever, name="rayppo-env-loop", daemon=True)
                self._loop_thread.start()
            return self._loop

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop_thread.join(timeout=5)
                self._loop.close()
                self._loop = None
