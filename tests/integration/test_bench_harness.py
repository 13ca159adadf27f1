"""The benchmark harness on the tiny model: rayppo's side of W1 steps for real, taking turns,
and the report writer turns the summaries into JSON, markdown, a chart and a README section."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.integration


def test_rayppo_runner_alternates_and_reports(tiny_model, ray_session, tmp_path):
    from benchmarks import micro, report
    from benchmarks.compare import alternate
    from benchmarks.run_rayppo import RayppoRunner, rayppo_config
    from benchmarks.w1 import Workload, param_count, step_flops

    w = Workload("W1-test/tiny", "tiny", prompts=2, group=2, completion_tokens=5, threads=1)
    runners = []
    try:
        for name, overrides in (("rayppo", ()), ("rayppo[mbt]", ("learner.micro_batch_tokens=16",))):
            # Eager decode: compiling the engine would cost more start-up than these steps.
            overrides = ("rollout.enforce_eager=true", *overrides)
            runner = RayppoRunner(rayppo_config(w, tiny_model, str(tmp_path / name), *overrides))
            runner.name = name
            runners.append(runner)
        summaries = alternate(runners, warmup=1, steps=1, log=lambda _: None)
        trainer = runners[0].trainer
        ids = [trainer.train_ids[i] for i in range(w.prompts)]
        probe = micro.probe_cost(trainer.rollouts, ids, micro.w1_sampling(w), trainer.probe, repeats=1)
    finally:
        for runner in runners:
            runner.close()

    order = [(r["round"], name) for name, s in summaries.items() for r in s["steps"]]
    assert sorted(order) == [(0, "rayppo"), (0, "rayppo[mbt]"), (1, "rayppo"), (1, "rayppo[mbt]")]
    for summary in summaries.values():
        measured = [r for r in summary["steps"] if not r["warmup"]]
        assert summary["measured_steps"] == 1 and summary["median_s"] == measured[0]["seconds"]
        # ignore_eos: every completion has exactly the forced length.
        assert all(r["response/length_mean"] == w.completion_tokens for r in summary["steps"])
        # The weight sync is verified every step and the engine runs the learner's weights.
        assert summary["sync/probe_diff"] < 1e-3
        assert set(summary["phases_median_s"]) >= {"generate", "logprobs", "update", "sync"}

    assert probe["generate_s"] > 0 and probe["generate_with_probe_s"] > 0
    n_params = param_count(tiny_model)
    sync = micro.weight_sync("tiny", n_params, 4, summaries["rayppo"], probe)
    # Verified sync = sync phase + the probe's share of generate + the wait for the learner.
    assert sync["verified_sync_s"] >= summaries["rayppo"]["phases_median_s"]["sync"]
    assert sync["fraction_of_step"] == pytest.approx(sync["verified_sync_s"] / summaries["rayppo"]["median_s"])
    flops = step_flops(w, n_params, prompt_tokens=10.0)
    assert flops["train"] == 3 * flops["reference"]
    results = {
        "machine": {"date": "d", "gpu": None, "cpu": "c", "cores": 2, "memory_gib": 1.0},
        "versions": {"torch": "x"},
        "threads": 1, "warmup": 1, "steps": 1, "load_before": [], "load_after": [],
        "peak": {"gflops": 100.0, "dtype": "float32"},
        "workloads": [{
            "workload": w.to_dict(), "params": n_params, "floor_s": 0.01,
            "runners": summaries, "overrides": {"rayppo[mbt]": ["learner.micro_batch_tokens=16"]},
            "rayppo_floor_multiple": summaries["rayppo"]["median_s"] / 0.01,
            "learner": {"train_tokens_per_s": 1.0, "update_gflops": 1.0, "mfu": 0.5,
                        "reference_tokens_per_s": None},
            "weight_sync": sync,
        }],
    }
    paths = report.write(results, str(tmp_path / "results"))
    assert [os.path.basename(p) for p in paths] == ["results.json", "results.md", "results.png"]
    assert json.load(open(paths[0]))["workloads"][0]["runners"]["rayppo"]["median_s"] > 0
    text = open(paths[1]).read()
    assert "| W1-test/tiny |" in text and "not run" in text and "rayppo[mbt]" in text

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Benchmarks\n\n{report.README_START}\nold\n{report.README_END}\ntail\n")
    report.update_readme(str(readme), "new table\n")
    assert readme.read_text() == (
        f"# x\n\n## Benchmarks\n\n{report.README_START}\nnew table\n{report.README_END}\ntail\n"
    )
    with pytest.raises(ValueError, match="markers"):
        report.update_readme(str(tmp_path / "results" / "results.md"), "t")
