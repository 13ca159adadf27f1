import logging
import math
import re
import textwrap

import numpy as np
import pytest

from pipeline import rewards

MODULE = "rayppo_reward_fixture_mod"


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent("""
        import math

        NOT_CALLABLE = 3

        def exact(prompt, completion, answer):
            return float(completion.strip() == answer)

        def flaky(prompt, completion, answer):
            if completion == "raise":
                raise RuntimeError("boom on " + prompt)
            if completion == "nan":
                return math.nan
            if completion == "inf":
                return math.inf
            if completion == "text":
                return "1.0"
            if completion == "none":
                return None
            if completion == "bool":
                return True
            return len(completion)

        class Scorers:
            @staticmethod
            def half(prompt, completion, answer):
                return 0.5
    """))
    (tmp_path / "rayppo_reward_broken_mod.py").write_text("raise ImportError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return MODULE


def test_builtin_resolves_to_task_verifier():
    fn = rewards.resolve_reward_fn("builtin", "arithmetic")
    assert fn("Compute 2+3.", "5", "5") == 1.0
    assert fn("Compute 2+3.", "6", "5") == 0.0
    fn = rewards.resolve_reward_fn("builtin", "countdown")
    assert fn("Use 3 5 7 to make 22.", "3*5+7", "3*5+7") == 1.0


def test_builtin_needs_a_known_task():
    with pytest.raises(ValueError, match=r"reward\.function='builtin' needs data\.task"):
        rewards.resolve_reward_fn("builtin", None)
    with pytest.raises(ValueError, match=r"data\.task='chess'"):
        rewards.resolve_reward_fn("builtin", "chess")


def test_import_path_resolves(reward_module):
    fn = rewards.resolve_reward_fn(f"{reward_module}:exact", None)
    assert fn("p", " 7 ", "7") == 1.0
    assert rewards.resolve_reward_fn(f"{reward_module}:Scorers.half", None)("p", "c", None) == 0.5


@pytest.mark.parametrize(
    "function,message",
    [
        ("my_rewards.score", r"must be 'builtin' or an import path 'package\.module:function'"),
        ("a:b:c", r"must be 'builtin' or an import path"),
        (":score", r"must be 'builtin' or an import path"),
        ("rayppo_no_such_module_xyz:score", r"cannot import module 'rayppo_no_such_module_xyz'"),
        ("rayppo_reward_broken_mod:score", r"importing module 'rayppo_reward_broken_mod' failed \(ImportError: needs a GPU\)"),
        (f"{MODULE}:missing", rf"module '{MODULE}' has no attribute 'missing'"),
        (f"{MODULE}:Scorers.missing", rf"module '{MODULE}' has no attribute 'Scorers\.missing'"),
        (f"{MODULE}:NOT_CALLABLE", rf"{MODULE}\.NOT_CALLABLE is not callable \(got int\)"),
    ],
)
def test_resolution_errors_name_the_field_and_path(reward_module, function, message):
    with pytest.raises(ValueError, match=re.escape(f"reward.function={function!r}") + ".*" + message):
        rewards.resolve_reward_fn(function, "arithmetic")


def test_score_completions_marks_failures_nan_and_warns_once(reward_module, caplog):
    fn = rewards.resolve_reward_fn(f"{reward_module}:flaky", None)
    completions = ["ab", "raise", "nan", "inf", "text", "none", "bool", "raise", "abcd"]
    prompts = [f"p{i}" for i in range(len(completions))]
    with caplog.at_level(logging.WARNING, logger="pipeline.rewards"):
        scores, failed = rewards.score_completions(fn, prompts, completions, [None] * len(completions))
    assert scores.dtype == np.float64
    assert failed == 6
    expected = [2.0, math.nan, math.nan, math.nan, math.nan, math.nan, 1.0, math.nan, 4.0]
    np.testing.assert_array_equal(scores, np.array(expected))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert f"{MODULE}.flaky" in text
    assert "6 of 9" in text
    assert "sample 1 raised RuntimeError: boom on p1" in text


def test_score_completions_all_good_is_silent(caplog):
    fn = rewards.resolve_reward_fn("builtin", "arithmetic")
    with caplog.at_level(logging.WARNING, logger="pipeline.rewards"):
        scores, failed = rewards.score_completions(
            fn, ["Compute 1+1.", "Compute 2+2."], ["2", "5"], ["2", "4"]
        )
    assert failed == 0 and scores.tolist() == [1.0, 0.0]
    assert not caplog.records


def test_builtin_without_answer_is_unscorable_not_fatal():
    fn = rewards.resolve_reward_fn("builtin", "arithmetic")
    scores, failed = rewards.score_completions(fn, ["Compute 1+1."], ["2"], [None])
    assert failed == 1 and math.isnan(scores[0])


def test_score_completions_length_mismatch():
    fn = rewards.resolve_reward_fn("builtin", "arithmetic")
    with pytest.raises(ValueError, match=r"rewards\.score_completions: got 2 prompts, 1 completions"):
        rewards.score_completions(fn, ["a", "b"], ["1"], ["1", "2"])
