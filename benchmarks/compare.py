"""Side-by-side timing: runners take turns one step at a time (A B A B ...), warm-up discarded.

A runner is anything with ``name``, ``step() -> {"seconds": float, ...}`` and ``close()``;
``phases`` in a step's result (rayppo's per-phase seconds) are summarised by their medians too.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def alternate(runners: list, warmup: int, steps: int, log: Callable[[str], None] = print) -> dict:
    """Run ``warmup + steps`` rounds; in each round every runner does one step, in turn."""
    records: dict[str, list[dict]] = {r.name: [] for r in runners}
    for round_index in range(warmup + steps):
        for runner in runners:
            result = runner.step()
            result["round"] = round_index
            result["warmup"] = round_index < warmup
            records[runner.name].append(result)
            log(f"  round {round_index} {runner.name}: {result['seconds']:.2f} s"
                + (" (warm-up)" if result["warmup"] else ""))
    return {name: summarise(rows) for name, rows in records.items()}


def summarise(rows: list[dict]) -> dict:
    measured = [r for r in rows if not r["warmup"]] or rows
    seconds = [r["seconds"] for r in measured]
    out = {
        "steps": rows,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "measured_steps": len(measured),
    }
    phase_names = [k for r in measured for k in r.get("phases", {})]
    if phase_names:
        out["phases_median_s"] = {
            name: statistics.median(r["phases"].get(name, 0.0) for r in measured)
            for name in dict.fromkeys(phase_names)
        }
    for key in ("sync/seconds", "sync/gather_seconds", "sync/load_seconds", "sync/check_seconds", "sync/probe_diff"):
        values = [r[key] for r in measured if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times
