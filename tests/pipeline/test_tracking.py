import glob
import json
import os
import time

import pytest

from pipeline.infra.tracking import MetricsLogger, PhaseTimers, format_table, plot_curves


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _logger(log_dir, **kw):
    kw.setdefault("wandb_mode", "disabled")
    kw.setdefault("progress_bar", False)
    return MetricsLogger(str(log_dir), "test", {"a": 1}, total_steps=5, **kw)


def test_phase_timers_accumulate_and_reset():
    timers = PhaseTimers()
    with timers.phase("generate"):
        time.sleep(0.01)
    with timers.phase("train"):
        with timers.phase("sync"):
            pass
    with timers.phase("generate"):
        time.sleep(0.01)
    with pytest.raises(RuntimeError):
        with timers.phase("score"):
            raise RuntimeError("boom")
    out = timers.pop()
    assert list(out) == ["time/generate", "time/train", "time/sync", "time/score"]
    assert out["time/generate"] >= 0.02
    assert out["time/train"] >= out["time/sync"] >= 0
    assert timers.pop() == {}


def test_jsonl_content_and_nan(tmp_path):
    log = _logger(tmp_path)
    log.log(0, {"eval/accuracy": 0.25})
    log.log(1, {"reward/mean": 0.5, "kl/mean": float("nan"), "n": 3, "step": 99})
    log.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text
    assert [json.loads(l) for l in text.splitlines()] == [
        {"step": 0, "eval/accuracy": 0.25},
        {"step": 1, "reward/mean": 0.5, "kl/mean": None, "n": 3},
    ]


def test_fresh_run_replaces_old_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 7}\n')
    log = _logger(tmp_path)
    log.log(1, {"x": 1.0})
    log.close()
    assert _rows(tmp_path / "metrics.jsonl") == [{"step": 1, "x": 1.0}]


def test_resume_truncates_steps_being_redone(tmp_path):
    log = _logger(tmp_path)
    for step in range(5):
        log.log(step, {"x": float(step)})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "x"')  # cut short by a crash
    log = _logger(tmp_path, resume=True)
    log.log(3, {"x": 30.0})
    log.log(4, {"x": 40.0})
    log.close()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["x"]) for r in rows] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_progress_bar_postfix(tmp_path, capsys):
    log = _logger(tmp_path, progress_bar=True)
    log.log(1, {"reward/mean": 0.5, "kl/mean": 0.01})
    log.log(2, {"eval/accuracy": 0.75})
    log.close()
    err = capsys.readouterr().err
    assert "reward=0.5" in err and "acc=0.75" in err and "kl=0.01" in err


def test_wandb_offline_run_writes_under_log_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    log_dir = tmp_path / "logs"
    log = _logger(log_dir, wandb_mode="offline")
    log.log(1, {"reward/mean": 0.5})
    log.close()
    runs = glob.glob(str(log_dir / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    assert glob.glob(os.path.join(runs[0], "run-*.wandb"))
    assert _rows(log_dir / "metrics.jsonl") == [{"step": 1, "reward/mean": 0.5}]


def test_bad_wandb_mode(tmp_path):
    with pytest.raises(ValueError, match="wandb_mode"):
        _logger(tmp_path, wandb_mode="cloud")


def test_plot_curves_writes_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "reward/mean": s / 10, "kl/mean": None if s == 2 else 0.01 * s}
            for s in range(1, 6)] + [{"step": 0, "eval/accuracy": 0.1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_curves(str(path), str(tmp_path / "out" / "curves.png"))
    assert png == str(tmp_path / "out" / "curves.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with open(plot_curves(str(empty), str(tmp_path / "empty.png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_format_table():
    text = format_table([("grpo", "0.81"), ("reinforce_pp", "0.7")], ("advantage", "acc"))
    assert text.splitlines() == [
        "advantage     acc",
        "------------  ----",
        "grpo          0.81",
        "reinforce_pp  0.7",
    ]
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        format_table([("a",)], ("x", "y"))
