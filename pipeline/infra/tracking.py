"""Metrics sinks (JSONL, progress bar, Weights & Biases), phase timers and summary output.

Step convention: ``step`` counts completed RL steps, so the evaluation before training is
step 0 and the last step is ``total_steps``; the progress bar shows ``step / total_steps``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Iterator

from tqdm import tqdm

# Postfix of the progress bar: (metric key, short label).
_BAR_KEYS = (("reward/mean", "reward"), ("eval/accuracy", "acc"), ("kl/mean", "kl"))


class PhaseTimers:
    """Wall-clock seconds per phase of a step, reported as ``time/<phase>``."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        key = f"time/{name}"
        # Registered on entry so nested phases keep the order in which they started.
        self._totals.setdefault(key, 0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._totals[key] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """This step's timings (first-use order); the timers start again from zero."""
        out, self._totals = self._totals, {}
        return out


def _json_value(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    value = float(value)
    # JSON has no NaN / Infinity; null keeps every line parseable by strict readers.
    return value if math.isfinite(value) else None


class MetricsLogger:
    """Writes each step's metrics to ``{log_dir}/metrics.jsonl``, a progress bar and W&B.

    With ``resume=True`` the existing file is kept, except lines whose step is at or after the
    first step logged by this process, which a resumed run is about to write again.
    """

    def __init__(
        self,
        log_dir: str,
        run_name: str,
        config: dict,
        total_steps: int,
        wandb_mode: str = "offline",
        wandb_project: str = "rayppo",
        progress_bar: bool = True,
        resume: bool = False,
        wandb_group: str | None = None,
    ) -> None:
        if wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(
                f"wandb_mode: must be one of offline, online, disabled; got {wandb_mode!r}"
            )
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir = log_dir
        self.path = os.path.join(log_dir, "metrics.jsonl")
        self._pending_truncate = resume and os.path.exists(self.path)
        self._file = None if self._pending_truncate else open(self.path, "w", encoding="utf-8")
        self._postfix: dict[str, float] = {}
        self._bar = tqdm(
            total=total_steps,
            desc=run_name,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not progress_bar,
        )
        self._run = None
        if wandb_mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb  # slow import, only paid when enabled

            self._run = wandb.init(
                project=wandb_project,
                name=run_name,
                group=wandb_group,
                config=config,
                dir=log_dir,
                mode=wandb_mode,
                reinit="create_new",
                # Console capture would interleave with the progress bar on stderr.
                settings=wandb.Settings(console="off"),
            )

    def _truncate_from(self, step: int) -> None:
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the crash being resumed from
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
                    kept.append(json.dumps(row, allow_nan=False) + "\n")
        fd, tmp = tempfile.mkstemp(dir=self.log_dir, prefix=".metrics-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            if self._pending_truncate:
                self._truncate_from(step)
                self._pending_truncate = False
            self._file = open(self.path, "a", encoding="utf-8")
        row: dict[str, Any] = {"step": step}
        row.update((k, _json_value(v)) for k, v in metrics.items() if k != "step")
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

        for key, label in _BAR_KEYS:
            if row.get(key) is not None:
                self._postfix[label] = row[key]
        if not self._bar.disable:
            self._bar.n = max(0, min(step, self._bar.total or step))
            self._bar.set_postfix_str(
                " ".join(f"{k}={v:.4g}" for k, v in self._postfix.items()), refresh=False
            )
            self._bar.refresh()
        if self._run is not None:
            self._run.log(dict(metrics), step=step)

    def alert(self, title: str, text: str) -> None:
        """A warning for the people watching the run: a W&B alert when a run is live (online;
        offline runs keep no alerts), else nothing here (callers also log it)."""
        if self._run is not None and getattr(self._run.settings, "mode", "") == "online":
            import wandb

            self._run.alert(title=title[:63], text=text, level=wandb.AlertLevel.WARN)

    def rewind(self) -> None:
        """A restart is about to log again from an earlier step: the lines at and after the
        next step logged are dropped then, as on a resume."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending_truncate = os.path.exists(self.path)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
        self._bar.close()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics_rows(path: str) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a line cut short by a crash is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def plot_curves(
    jsonl_path: str,
    png_path: str,
    keys: tuple[str, ...] = ("reward/mean", "eval/accuracy", "kl/mean"),
) -> str:
    """One subplot per key that has at least one value, against ``step``; returns ``png_path``."""
    # The object API with an explicit Agg canvas leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics_rows(jsonl_path)
    series = {}
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None and "step" in r]
        if points:
            series[key] = points
    fig = Figure(figsize=(4.0 * max(1, len(series)), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    if not series:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no data for " + ", ".join(keys), ha="center", va="center")
        ax.set_axis_off()
    for i, (key, points) in enumerate(series.items()):
        ax = fig.add_subplot(1, len(series), i + 1)
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 50 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(png_path) or ".", exist_ok=True)
    fig.savefig(png_path, dpi=100)
    return png_path


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Left-aligned plain-text table with a dashed rule under the header."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    for i, row in enumerate(cells[1:]):
        if len(row) != len(header):
            raise ValueError(f"rows[{i}]: has {len(row)} cells, header has {len(header)}")
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
