"""The human-feedback loop end to end, raters scripted through the app's HTTP API:

sample (rollout engines) -> raters compare -> export pairs -> ``rayppo rm`` -> ``rayppo train``
(2 steps) with that reward model as the reward -> sample the new and the old policy ->
raters compare them -> win rate of new over old with its 95% interval.

Every stage goes through the ``rayppo`` command itself (in this process, on the session's Ray).
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from pipeline.cli import main as rayppo
from pipeline.feedback.storage import add_rater

pytestmark = pytest.mark.integration


def scripted_rater(url: str, token: str, task_id: int) -> int:
    """Prefers the shorter reply (a rule a reward model can pick up), a tie on equal lengths."""
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    rated = 0
    while (handout := client.post(f"/api/tasks/{task_id}/next").json()["assignment"]) is not None:
        a, b = len(handout["replies"]["A"]), len(handout["replies"]["B"])
        choice = "tie" if a == b else ("A" if a < b else "B")
        r = client.post(f"/api/assignments/{handout['assignment_id']}/rating", json={"choice": choice})
        assert r.status_code == 201, r.text
        rated += 1
    return rated


def _task_id(db, name: str) -> int:
    from pipeline.feedback.export import resolve_tasks

    (task,) = resolve_tasks(db, [name])
    return task.id


def test_sample_rate_rm_train_compare(tiny_model, ray_session, tiny_config, db, live_server, tmp_path, capsys):
    from pipeline.config import save_config

    prompts, held_out = tmp_path / "prompts.jsonl", tmp_path / "held_out.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say something about {i}"}) + "\n" for i in range(8)))
    held_out.write_text("".join(json.dumps({"prompt": f"and about {i}"}) + "\n" for i in range(4)))
    dbarg = ["--db", db.url]
    tokens = [add_rater(db, name) for name in ("ann", "bob")]
    sampling = ["--engine", "hf", "--max-tokens", "12", "--temperature", "1.0"]

    # 1. sample: two replies of the starting policy per prompt, by a rollout engine actor.
    assert rayppo(["feedback", "add-tasks", *dbarg, "--name", "round1", "--kind", "compare", "--prompts",
                   str(prompts), "--model", f"old={tiny_model}", "--raters-per-item", "2", *sampling]) == 0
    server = live_server()
    # 2. humans rate (scripted, through the HTTP API).
    round1 = _task_id(db, "round1")
    assert [scripted_rater(server.url, t, round1) for t in tokens] == [8, 8]

    # 3. export pairs -> rayppo rm.
    pairs = tmp_path / "pairs.jsonl"
    assert rayppo(["feedback", "export", "pairs", *dbarg, "--out", str(pairs)]) == 0
    assert len(pairs.read_text().splitlines()) >= 1
    rm_dir, run_dir = tmp_path / "rm", tmp_path / "run"
    config = save_config(tiny_config(
        tiny_model, str(run_dir), "rollout.engine=hf", "data.task=null", f"data.train_files=[{prompts}]",
        f"data.eval_files=[{held_out}]", "logging.sample_every=1", "logging.sample_prompts=2",
        f"rm.base_path={tiny_model}", f"rm.train_files=[{pairs}]", f"rm.output_dir={rm_dir}",
        f"rm.log_dir={tmp_path / 'rm_logs'}", "rm.num_workers=1", "rm.steps=4", "rm.batch_size=4",
        "rm.eval_every=0", "rm.lr=1e-3",
        f"reward.sources=[{{kind: model, name: human_rm, path: {rm_dir}, cpus: 0.25}}]",
    ), str(tmp_path / "loop.yaml"))
    assert rayppo(["rm", config]) == 0
    assert os.path.isfile(rm_dir / "reward_stats.json")

    # 4. rayppo train, rewarded by that reward model.
    assert rayppo(["train", config]) == 0
    metrics = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert all(m.get("reward/human_rm/mean") is not None and m["reward/human_rm/unscorable"] == 0
               for m in metrics[1:])
    samples = [json.loads(line) for line in (run_dir / "logs" / "samples.jsonl").read_text().splitlines()]
    assert sorted({(s["step"], s["group"]) for s in samples}) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(isinstance(s["reward"], float) for s in samples)

    # The run's logged samples make items too.
    assert rayppo(["feedback", "add-tasks", *dbarg, "--name", "from-run", "--kind", "rate",
                   "--from-run", str(run_dir / "logs")]) == 0

    # 5. compare the new policy with the old one in the app.
    policy = run_dir / "policy"
    assert rayppo(["feedback", "add-tasks", *dbarg, "--name", "new-vs-old", "--kind", "compare", "--prompts",
                   str(held_out), "--model", f"new={policy}", "--model", f"old={tiny_model}",
                   "--raters-per-item", "2", *sampling]) == 0
    final = _task_id(db, "new-vs-old")
    assert [scripted_rater(server.url, t, final) for t in tokens] == [4, 4]
    capsys.readouterr()
    stats_file = tmp_path / "stats.json"
    assert rayppo(["feedback", "stats", *dbarg, "--task", "new-vs-old", "--json", str(stats_file)]) == 0
    printed = capsys.readouterr().out
    (entry,) = json.loads(stats_file.read_text())["tasks"]
    (win,) = entry["win_rates"]
    assert (win["model_a"], win["model_b"]) == ("new", "old")
    assert win["n"] == 8 and win["both_bad"] == 0  # 4 items x 2 raters; nobody says both bad
    assert 0 <= win["low"] <= win["win_rate"] <= win["high"] <= 1
    assert "win rate of new over old" in printed
    # Both raters follow one rule, so they agree on every shared item.
    (pair,) = entry["agreement"]["pairs"]
    # (kappa is null, undefined, when every shared item got the same answer)
    assert pair["items"] == 4 and (pair["kappa"] is None or pair["kappa"] == pytest.approx(1.0))
