"""The environment API: loading and its errors, safe steps, async and batched environments."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from pipeline.config import load_config
from pipeline.config.envs import EnvConfig
from pipeline.data import PromptRow
from pipeline.envs.base import EnvFactory, load_env, step_all

HERE = "tests.envs.envs_for_tests"
ROW = PromptRow(messages=[{"role": "user", "content": "hi"}], answer="42", source="rows.jsonl:row 1")


def env_config(name: str, **fields) -> EnvConfig:
    return EnvConfig(class_path=f"{HERE}:{name}" if ":" not in name else name, **fields)


def run_conversation(session, replies):
    results = []
    for reply in replies:
        results.append(session.step(reply))
        if results[-1].done:
            break
    return results


# ---------------------------------------------------------------------------------------------
# Config


def test_env_class_key_loads_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"env:\n  class: {HERE}:CountingEnv\n  kwargs: {{turns: 2}}\n  user: {{persona: terse}}\n")
    cfg = load_config(path)
    assert (cfg.env.class_path, cfg.env.kwargs, cfg.env.user.persona) == (f"{HERE}:CountingEnv", {"turns": 2}, "terse")
    cfg = load_config(path, [f"env.class={HERE}:AsyncCountingEnv", "env.max_turns=3"])
    assert (cfg.env.class_path, cfg.env.max_turns) == (f"{HERE}:AsyncCountingEnv", 3)
    assert load_config(None).env.class_path is None  # single-turn by default


@pytest.mark.parametrize(
    "override, message",
    [
        ("env.class=no_colon", "env.class: must be an import path"),
        ("env.class=3", "env.class: expected str or null"),
        ("env.klass=a:B", "did you mean 'env.class'"),
        ("env.max_turns=0", "env.max_turns: must be >= 1"),
        ("env.max_tokens_per_turn=300", "env.max_tokens_per_turn (300) must be <="),
        ("env.step_timeout_s=0", "env.step_timeout_s: must be > 0"),
        ("env.user.engine=tgi", "env.user.engine: must be one of vllm, hf"),
        ("env.user.top_p=1.5", "env.user.top_p: must be <= 1"),
        ("env.user.reward=nocolon", "env.user.reward: must be an import path"),
        ("env.user={model_path: m, request_timeout_s: 90}", "env.user.request_timeout_s (90.0) must be < env.step_timeout_s"),
    ],
)
def test_bad_env_config_names_the_field(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


# ---------------------------------------------------------------------------------------------
# load_env: every way an environment can be wrong, before heavy work


@pytest.mark.parametrize(
    "path, message",
    [
        ("no_such_package.envs:Env", "cannot import module 'no_such_package.envs'"),
        ("tests.envs.broken_env_module:Env", "importing module 'tests.envs.broken_env_module' failed .RuntimeError: this environment module is broken"),
        (f"{HERE}:Missing", "has no attribute 'Missing'"),
        (f"{HERE}:not_a_class", "is a function, not a class"),
        (f"{HERE}:NoStep", "has no 'step' method"),
    ],
)
def test_load_env_import_errors_name_env_class(path, message):
    with pytest.raises(ValueError, match=message) as err:
        load_env(EnvConfig(class_path=path))
    assert f"env.class={path!r}" in str(err.value)


def test_load_env_rejects_kwargs_the_constructor_does_not_take():
    with pytest.raises(ValueError, match="env.kwargs does not fit env.class=.*CountingEnv.*unexpected keyword argument 'colour'"):
        load_env(env_config("CountingEnv", kwargs={"colour": "red"}))


@pytest.mark.parametrize(
    "name, message",
    [
        ("NotAList", r"reset\(\) returned 'hello'; expected a non-empty list of message dicts \(trial reset on rows.jsonl:row 1\)"),
        ("EndsWithAssistant", "reset.. returned messages ending with role 'assistant'"),
        ("ThreeTuple", r"step\(\) returned \('hi', 1.0, False\); expected a tuple \(next_message, reward, done, info\) \(trial step"),
        ("StringReward", "step.. returned reward '1.0'; expected a finite number"),
        ("NanReward", "step.. returned reward nan; expected a finite number"),
        ("IntDone", "step.. returned done=0; expected a bool"),
        ("ListInfo", "step.. returned info of type list; expected a dict"),
        ("AssistantMessage", "step.. returned next message .*'assistant'"),
        ("BadConversationReward", r"info\['conversation_reward'\]='high'; expected a finite number"),
        ("FailingConstructor", "constructing it with env.kwargs={} failed .OSError: missing credentials"),
        ("RaisingResetEnv", None),  # seed 0 resets fine: no error
    ],
)
def test_trial_reset_and_step_catch_wrong_types(name, message):
    cfg = env_config(name)
    if message is None:
        assert load_env(cfg, ROW).name == cfg.class_path
        return
    with pytest.raises(ValueError, match=message) as err:
        load_env(cfg, ROW)
    assert f"env.class={cfg.class_path}" in str(err.value)


def test_trial_step_can_be_turned_off():
    load_env(env_config("ThreeTuple", trial_step=False), ROW)  # only reset is tried
    with pytest.raises(ValueError, match="trial step on"):
        load_env(env_config("ThreeTuple"), ROW)


# ---------------------------------------------------------------------------------------------
# Sessions: rewards, limits, failures


def test_session_runs_a_conversation_and_keeps_its_messages():
    factory = load_env(env_config("CountingEnv"), ROW)
    session = factory.make()
    opening = session.reset(ROW, seed=7)
    assert opening == [{"role": "system", "content": "Count."}, {"role": "user", "content": "start 7"}]
    results = run_conversation(session, ["one", "one two", "one two three", "never sent"])
    assert [r.reward for r in results] == [1.0, 2.0, 3.0]
    assert [r.user_message for r in results] == [{"role": "user", "content": "turn 1"}, {"role": "user", "content": "turn 2"}, None]
    assert results[-1].done and results[-1].conversation_reward == 10.0 and not results[-1].truncated
    assert session.total_reward == 16.0 and session.turns == 3
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    metrics = factory.metrics()
    assert metrics["env/conversations"] == 1 and metrics["env/steps"] == 3 and metrics["env/unscorable"] == 0
    assert metrics["env/turns"] == 3.0  # info["metrics"], averaged
    assert factory.metrics()["env/steps"] == 0  # counters reset after each read


def test_max_turns_and_final_end_the_conversation_but_keep_the_reward():
    factory = load_env(env_config("CountingEnv", kwargs={"turns": 5}, max_turns=2))
    session = factory.make()
    session.reset(ROW, 0)
    first, second = session.step("a b"), session.step("a b c")
    assert not first.done and second.done and second.truncated and second.user_message is None
    assert second.reward == 3.0
    other = factory.make()
    other.reset(ROW, 0)
    cut = other.step("a", final=True)  # the token budget is spent
    assert cut.done and cut.truncated and cut.reward == 1.0
    assert factory.metrics()["env/truncated"] == 2


def test_env_cannot_change_the_conversation_through_its_arguments():
    session = load_env(env_config("MutatingEnv")).make()
    session.reset(ROW, 0)
    session.step("hello")
    assert [m["content"] for m in session.messages] == ["Count.", "start 0", "hello", "turn 1"]


def test_exception_in_step_marks_only_that_conversation_unscorable(caplog):
    factory = load_env(env_config("RaisingEnv"), ROW)
    good, bad = factory.make(), factory.make()
    good.reset(ROW, 0), bad.reset(ROW, 1)
    failed = bad.step("boom")
    assert failed.unscorable and failed.done and failed.reward == 0.0
    assert "RaisingEnv: step() raised RuntimeError: the service is down" in failed.error
    assert bad.step("more").unscorable  # a failed conversation stays failed
    assert [r.reward for r in run_conversation(good, ["a", "a", "a"])] == [1.0, 1.0, 1.0]
    metrics = factory.metrics()
    assert (metrics["env/unscorable"], metrics["env/errors"]) == (1, 1)
    assert "RaisingEnv: step() raised RuntimeError" in caplog.text


def test_wrong_return_type_at_run_time_is_unscorable_and_names_the_class():
    factory = load_env(env_config("StringReward", trial_step=False), ROW)
    session = factory.make()
    session.reset(ROW, 0)
    result = session.step("hi")
    assert result.unscorable and f"env.class={HERE}:StringReward: step() returned reward '1.0'" in result.error
    assert factory.metrics()["env/bad_returns"] == 1


def test_failed_reset_keeps_shapes_regular():
    factory = load_env(env_config("RaisingResetEnv"), ROW)
    session = factory.make()
    assert session.reset(ROW, seed=1) == ROW.messages  # the row's own opening, to keep going
    assert session.unscorable and "reset() raised KeyError" in session.error
    result = session.step("anything")
    assert result.done and result.unscorable
    assert factory.metrics()["env/unscorable"] == 1


def test_slow_step_times_out_as_unscorable():
    from tests.envs import envs_for_tests

    factory = load_env(env_config("BlockedEnv", step_timeout_s=0.2, trial_step=False))
    session = factory.make()
    session.reset(ROW, 0)
    envs_for_tests.BlockedEnv.release.clear()
    envs_for_tests.BlockedEnv.returned = 0
    try:
        result = session.step("hi")
        # The environment's step is still blocked: the timeout returned, not the step.
        assert envs_for_tests.BlockedEnv.returned == 0
    finally:
        envs_for_tests.BlockedEnv.release.set()
    assert result.unscorable and "took longer than env.step_timeout_s=0.2" in result.error
    assert factory.metrics()["env/timeouts"] == 1


# ---------------------------------------------------------------------------------------------
# Async, concurrency, batching


def test_async_env_from_async_and_sync_code():
    factory = load_env(env_config("AsyncCountingEnv"), ROW)  # the trial runs it from sync code

    async def conversation(seed):
        session = factory.make()
        await session.areset(ROW, seed)
        while not session.done:
            await session.astep("x y")
        return session.total_reward

    assert asyncio.run(conversation(3)) == 16.0
    session = factory.make()
    session.reset(ROW, 0)
    assert [r.reward for r in run_conversation(session, ["a", "a b", "a"])] == [1.0, 2.0, 1.0]


def test_async_env_timeout():
    factory = load_env(env_config("AsyncCountingEnv", step_timeout_s=0.001))
    session = factory.make()
    asyncio.run(session.areset(ROW, 0))
    assert session.unscorable and "reset() took longer" in session.error


def test_slow_sync_steps_run_on_threads_and_do_not_block_each_other():
    import threading

    from tests.envs import envs_for_tests

    factory = load_env(env_config("MeetingEnv", step_threads=4, trial_step=False))
    sessions = [factory.make() for _ in range(4)]
    for i, s in enumerate(sessions):
        s.reset(ROW, i)

    async def all_steps():
        return await asyncio.gather(*(s.astep("hi") for s in sessions))

    # Each step returns only when all four are running at once: one after another, the first
    # would wait at the barrier until it breaks (30 s) and every step would fail.
    envs_for_tests.MeetingEnv.barrier = threading.Barrier(4, timeout=30)
    results = asyncio.run(all_steps())
    assert [r.error for r in results] == [None] * 4
    assert [r.reward for r in results] == [1.0] * 4


def test_step_all_batches_env_classes_with_step_batch():
    from tests.envs import envs_for_tests

    envs_for_tests.BatchedEnv.calls.clear()
    batched = load_env(env_config("BatchedEnv"), ROW)
    plain = load_env(env_config("CountingEnv"), ROW)
    sessions = [batched.make() for _ in range(3)] + [plain.make()]
    for i, s in enumerate(sessions):
        s.reset(ROW, i)
    results = asyncio.run(step_all([(s, "a " * (i + 1)) for i, s in enumerate(sessions)]))
    assert [r.reward for r in results] == [1.0, 2.0, 3.0, 4.0]
    assert envs_for_tests.BatchedEnv.calls[-1] == 3
    assert all(s.turns == 1 and s.messages[-1] == {"role": "user", "content": "turn 1"} for s in sessions)
    assert batched.metrics()["env/steps"] == 3


def test_factory_pickles_for_ray_actors():
    factory = load_env(env_config("AsyncCountingEnv"), ROW)
    factory.make().reset(ROW, 0)  # starts its thread pool and loop, which must not travel
    copy = pickle.loads(pickle.dumps(factory))
    session = copy.make()
    session.reset(ROW, 0)
    assert session.step("a b").reward == 2.0
    factory.shutdown()
    copy.shutdown()


def test_failed_constructor_counts_one_unscorable_conversation():
    from tests.envs import envs_for_tests

    factory = EnvFactory(envs_for_tests.FailingConstructor, env_config("FailingConstructor"))
    session = factory.make()  # the constructor passed load_env's check but fails now
    assert session.unscorable and "__init__() raised OSError: missing credentials" in session.error
    assert session.reset(ROW, 0) == ROW.messages and session.step("x").unscorable
    metrics = factory.metrics()
    assert (metrics["env/unscorable"], metrics["env/errors"], metrics["env/conversations"]) == (1, 1, 1)
