"""``rayppo feedback ...`` from the command line: refusals before any engine or server starts,
and the sub-commands that need neither (add-rater, add-tasks --from-run, export, stats)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main as rayppo
from pipeline.feedback.rating_tasks import add_items, create_task, read_samples
from pipeline.feedback.storage import Database

from tests.feedback.conftest import compare_items


def test_bad_add_tasks_arguments_fail_with_a_reason(tmp_path, capsys, tiny_model):
    db = ["--db", str(tmp_path / "f.db")]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cases = [
        (["--name", "t", "--kind", "compare"], "either --prompts FILE with --model, or --from-run"),
        (["--name", "t", "--kind", "compare", "--prompts", str(prompts)], "--prompts needs --model"),
        (["--name", "t", "--kind", "compare", "--prompts", str(prompts), "--model", str(tmp_path / "none")],
         "does not exist"),
        (["--name", "t", "--kind", "compare", "--prompts", str(prompts), "--model", "a", "--model", "b",
          "--model", "c"], "one or two models"),
        (["--name", "t", "--kind", "chat"], "exactly one --model"),
        (["--name", "t", "--kind", "rate", "--from-run", str(tmp_path)], "no samples.jsonl"),
    ]
    for args, words in cases:
        assert rayppo(["feedback", "add-tasks", *db, *args]) == 2
        assert words in capsys.readouterr().err, args
    assert rayppo(["feedback", "add-tasks", *db, "--name", "talk", "--kind", "chat", "--model", tiny_model]) == 0
    assert rayppo(["feedback", "add-tasks", *db, "--name", "talk", "--kind", "chat", "--model", tiny_model]) == 2
    assert "--append" in capsys.readouterr().err


def test_task_and_sample_file_checks(db, tmp_path):
    with pytest.raises(ValueError, match="--kind"):
        create_task(db, "x", "judge")
    with pytest.raises(ValueError, match="needs --model"):
        create_task(db, "x", "chat")
    task = create_task(db, "x", "compare")
    with pytest.raises(ValueError, match="only 2 items"):
        add_items(db, task, compare_items(2), agreement_items=3)
    bad = tmp_path / "samples.jsonl"
    bad.write_text('{"step": 1, "group": 0, "prompt": [], "completion": "x"}\n{"step": "one"}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl: line 2: field 'step'"):
        read_samples(str(bad))


def test_add_rater_export_and_stats_commands(tmp_path, capsys):
    path = str(tmp_path / "f.db")
    assert rayppo(["feedback", "stats", "--db", str(tmp_path / "missing.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert rayppo(["feedback", "add-rater", "--db", path, "eve"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(token) >= 30
    assert rayppo(["feedback", "add-rater", "--db", path, "eve"]) == 2
    assert "already exists" in capsys.readouterr().err
    db = Database(path)
    add_items(db, create_task(db, "t", "compare"), compare_items(2))
    assert rayppo(["feedback", "export", "pairs", "--db", path, "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert rayppo(["feedback", "stats", "--db", path, "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "eve" in out and "no ratings yet" in out
    assert json.loads((tmp_path / "s.json").read_text())["raters"][0]["rater"] == "eve"
