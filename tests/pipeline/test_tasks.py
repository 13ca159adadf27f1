import re

import pytest

from pipeline import tasks


def test_generate_rows_is_deterministic_per_seed():
    for task in tasks.TASKS:
        a = tasks.generate_rows(task, 50, seed=3)
        assert a == tasks.generate_rows(task, 50, seed=3)
        assert a != tasks.generate_rows(task, 50, seed=4)
        # The chat tasks' rows also carry reference replies and metadata.
        extra = set() if task in ("arithmetic", "countdown") else {"references", "metadata"}
        assert all(set(r) == {"prompt", "answer"} | extra for r in a)


@pytest.mark.parametrize("min_digits,max_digits", [(1, 1), (1, 2), (2, 3), (4, 4)])
def test_arithmetic_rows_are_correct_and_in_range(min_digits, max_digits):
    for row in tasks.generate_rows("arithmetic", 300, 0, min_digits, max_digits):
        a, op, b = re.fullmatch(r"Compute (\d+)([+-])(\d+)\.", row["prompt"]).groups()
        for operand in (a, b):
            assert min_digits <= len(operand) <= max_digits
            assert operand == str(int(operand))
        result = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert result >= 0
        assert row["answer"] == str(result)


def test_countdown_rows_are_solved_by_their_answer():
    rows = tasks.generate_rows("countdown", 500, 1)
    for row in rows:
        numbers, target = tasks.parse_countdown_prompt(row["prompt"])
        assert len(numbers) in (3, 4)
        assert all(1 <= n <= 9 for n in numbers)
        assert target > 0
        assert tasks.verify("countdown", row["answer"], row["answer"], row["prompt"]) == 1.0
    assert {len(tasks.parse_countdown_prompt(r["prompt"])[0]) for r in rows} == {3, 4}


@pytest.mark.parametrize("task", tasks.TASKS)
def test_split_rows_disjoint_unique_and_stable(task):
    train, eval_ = tasks.split_rows(task, 300, 50, seed=7, min_digits=1, max_digits=2)
    assert len(train) == 300 and len(eval_) == 50
    prompts = [r["prompt"] for r in train + eval_]
    assert len(set(prompts)) == len(prompts)
    assert (train, eval_) == tasks.split_rows(task, 300, 50, seed=7, min_digits=1, max_digits=2)
    # The held-out set must not move when only the training size changes.
    _, eval_again = tasks.split_rows(task, 100, 50, seed=7, min_digits=1, max_digits=2)
    assert eval_again == eval_


def test_split_rows_reports_too_small_prompt_space():
    with pytest.raises(ValueError, match=r"data\.num_train \+ data\.num_eval = 1000.*data\.max_digits=1"):
        tasks.split_rows("arithmetic", 900, 100, 0, min_digits=1, max_digits=1)


def test_bad_arguments_name_the_config_field():
    with pytest.raises(ValueError, match=r"data\.task='sorting'"):
        tasks.generate_rows("sorting", 3, 0)
    with pytest.raises(ValueError, match=r"data\.task='sorting'"):
        tasks.verify("sorting", "1", "1", "x")
    with pytest.raises(ValueError, match=r"data\.min_digits=0"):
        tasks.generate_rows("arithmetic", 3, 0, min_digits=0)
    with pytest.raises(ValueError, match=r"data\.max_digits=1"):
        tasks.generate_rows("arithmetic", 3, 0, min_digits=2, max_digits=1)
    with pytest.raises(ValueError, match=r"data\.num_train=0"):
        tasks.split_rows("arithmetic", 0, 5, 0)


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("85", "85", 1.0),
        ("  85\n", "85", 1.0),
        ("85.", "85", 1.0),
        ("85 because 47+38=85", "85", 1.0),
        ("85<|im_end|>", "85", 1.0),
        ("0", "0", 1.0),
        ("850", "85", 0.0),
        ("8", "85", 0.0),
        ("8.5", "8", 0.0),
        ("-85", "85", 0.0),
        ("The answer is 85", "85", 0.0),
        ("", "85", 0.0),
        ("\x00\xff garbage", "85", 0.0),
    ],
)
def test_verify_arithmetic(completion, answer, expected):
    assert tasks.verify("arithmetic", completion, answer, "Compute 47+38.") == expected


PROMPT = "Use 3 5 7 to make 22."


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("3*5+7", 1.0),
        (" 7+3*5 \nexplanation: ...", 1.0),
        ("(7-3)*5+2", 0.0),  # 2 is not offered
        ("(5+7)*(7-5)", 0.0),  # 5 and 7 each used twice
        ("7*3+1", 0.0),
        ("3*5+7=22", 0.0),
        ("7*(3+5)/2", 0.0),  # 2 is not offered
        ("3*5+7.0", 0.0),
        ("3**5", 0.0),
        ("-3+5*5", 0.0),
        ("5//3", 0.0),
        ("7/0", 0.0),
        ("((3*5)+7", 0.0),
        ("__import__('os').system('echo hi')", 0.0),
        ("(lambda: 22)()", 0.0),
        ("0x3*5+7", 0.0),
        ("(" * 150 + "22" + ")" * 150, 0.0),
        ("", 0.0),
        ("\n\n", 0.0),
    ],
)
def test_verify_countdown(completion, expected):
    assert tasks.verify("countdown", completion, "3*5+7", PROMPT) == expected


def test_verify_countdown_exact_division_and_subset():
    prompt = "Use 8 2 9 to make 4."
    assert tasks.verify("countdown", "8/2", "", prompt) == 1.0
    assert tasks.verify("countdown", "(9-8)*8/2", "", prompt) == 0.0  # 8 used twice
    assert tasks.verify("countdown", "9/2", "", prompt) == 0.0  # 4.5, not 4


def test_verify_countdown_rejects_malformed_prompt():
    with pytest.raises(ValueError, match="countdown prompt"):
        tasks.verify("countdown", "1+1", "1+1", "make 2 please")


def test_arithmetic_digit_credit_hand_values():
    from pipeline.tasks import arithmetic_digit_credit

    assert arithmetic_digit_credit("Compute 40+46.", "86", "86") == 1.0
    assert arithmetic_digit_credit("Compute 40+46.", "85", "86") == 0.25  # units wrong, tens right
    assert arithmetic_digit_credit("Compute 40+46.", "76", "86") == 0.25
    assert arithmetic_digit_credit("Compute 40+46.", "186", "86") == pytest.approx(0.5 * 2 / 3)
    assert arithmetic_digit_credit("Compute 40+46.", "nothing", "86") == 0.0
    assert arithmetic_digit_credit("Compute 40+46.", "12", "86") == 0.0


def test_arithmetic_digit_credit_never_rewards_a_miss_like_a_hit():
    from pipeline.tasks import arithmetic_digit_credit

    for completion in ("860", "8", "68", "87", "96"):
        assert arithmetic_digit_credit("", completion, "86") <= 0.5


def test_every_registered_task_is_a_data_task_the_config_accepts():
    from pipeline.config import load_config

    for name in tasks.TASKS:
        assert tasks.get(name).name == name
        assert load_config(None, [f"data.task={name}"]).data.task == name
    with pytest.raises(ValueError, match="not a built-in task"):
        tasks.get("sudoku")


def test_prompt_splits_follow_the_task_hooks():
    from pipeline.config import DataConfig

    # arithmetic: the generated rows' prompts; memory: its own dialogues as prompt rows.
    train, eval_ = tasks.prompt_splits(DataConfig(task="arithmetic", num_train=5, num_eval=2))
    assert [r.source for r in eval_] == ["task arithmetic eval #1", "task arithmetic eval #2"]
    assert len(train) == 5 and train[0].messages[0]["role"] == "user"
    train, eval_ = tasks.prompt_splits(DataConfig(task="memory", num_train=4, num_eval=2))
    assert [r.source for r in train][:1] == ["task memory train #1"] and "memory" in eval_[0].metadata
