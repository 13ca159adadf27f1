import json
import re

import datasets
import pytest

from pipeline import data, tasks
from pipeline.config import DataConfig
from pipeline.stages import init_model

ROWS = [
    {"prompt": "Compute 1+2.", "answer": "3"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]},
    {"prompt": "Compute 5-1.", "answer": 4},
]


def _write_jsonl(path, rows, blank_lines=False):
    lines = [json.dumps(r) for r in rows]
    if blank_lines:
        lines.insert(1, "   ")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _dataset():
    # Columnar storage needs every column in every row and one type per column.
    columns = {key: [] for key in ("prompt", "messages", "answer")}
    for row in ROWS:
        for key, values in columns.items():
            value = row.get(key)
            values.append(str(value) if key == "answer" and value is not None else value)
    return datasets.Dataset.from_dict(columns)


def _check_rows(rows, path):
    assert [r.prompt_text for r in rows] == ["Compute 1+2.", "Hi?", "Compute 5-1."]
    assert [r.answer for r in rows] == ["3", None, "4"]
    assert rows[1].messages[0] == {"role": "system", "content": "Be brief."}
    assert rows[0].messages == [{"role": "user", "content": "Compute 1+2."}]
    assert all(r.source.startswith(path) for r in rows)


def test_load_jsonl_skips_blank_lines_and_numbers_rows_by_line(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", ROWS, blank_lines=True)
    rows = data.load_rows(path)
    _check_rows(rows, path)
    assert rows[1].source == f"{path}:row 3"


def test_load_json_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ROWS))
    rows = data.load_rows(str(path))
    _check_rows(rows, str(path))
    assert rows[2].source == f"{path}:row 3"


def test_load_parquet(tmp_path):
    path = str(tmp_path / "train.parquet")
    _dataset().to_parquet(path)
    _check_rows(data.load_rows(path), path)


def test_load_save_to_disk_dataset_and_dataset_dict(tmp_path):
    ds = _dataset()
    ds.save_to_disk(str(tmp_path / "ds"))
    _check_rows(data.load_rows(str(tmp_path / "ds")), str(tmp_path / "ds"))

    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    _check_rows(data.load_rows(str(tmp_path / "dd")), str(tmp_path / "dd"))

    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match=r"no_train: a saved DatasetDict needs a 'train' split"):
        data.load_rows(str(tmp_path / "no_train"))


def test_custom_keys(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"question": "Why?", "gold": 1.0}])
    (row,) = data.load_rows(path, prompt_key="question", answer_key="gold")
    assert row.prompt_text == "Why?" and row.answer == "1"


BAD_ROWS = [
    ({"answer": "3"}, r"missing 'prompt' or 'messages'"),
    ({"prompt": "   "}, r"'prompt' must be a non-empty string"),
    ({"prompt": 7}, r"'prompt' must be a non-empty string"),
    ({"messages": []}, r"field 'messages': must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     r"field 'messages': must end with a 'user' message"),
    ({"messages": [{"role": "robot", "content": "a"}]}, r"field 'messages\[0\]': role 'robot' is not one of"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, r"field 'messages\[0\]': content must be a string"),
    ({"messages": ["hello"]}, r"field 'messages\[0\]': must be a dict"),
    ({"prompt": "a", "answer": ["3"]}, r"'answer' must be a string or a number"),
    ({"prompt": "a", "answer": True}, r"'answer' must be a string or a number"),
    (["prompt", "a"], r"expected an object, got list"),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS)
def test_bad_jsonl_row_names_file_and_row(tmp_path, bad, message):
    path = _write_jsonl(tmp_path / "train.jsonl", [ROWS[0], ROWS[1], bad, ROWS[2]])
    with pytest.raises(ValueError, match=re.escape(f"{path}: row 3: ") + message):
        data.load_rows(path)


def test_bad_json_row_names_file_and_row(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([ROWS[0], {"text": "x"}]))
    with pytest.raises(ValueError, match=re.escape(f"{path}: row 2: missing 'prompt' or 'messages'")):
        data.load_rows(str(path))


def test_invalid_json_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{\"prompt\": \"x\"\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: row 3: invalid JSON (")):
        data.load_rows(str(path))


def test_file_level_errors(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jsonl: prompt file does not exist"):
        data.load_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "obj.json").write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(ValueError, match=r"obj\.json: a \.json prompt file must hold a list"):
        data.load_rows(str(tmp_path / "obj.json"))
    (tmp_path / "p.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match=r"p\.csv: unknown prompt file type"):
        data.load_rows(str(tmp_path / "p.csv"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match=r"empty_dir: not a directory written by datasets"):
        data.load_rows(str(tmp_path / "empty_dir"))


def test_prompt_splits_from_task():
    cfg = DataConfig(task="arithmetic", num_train=40, num_eval=10, seed=2)
    train, eval_ = tasks.prompt_splits(cfg)
    expected_train, expected_eval = tasks.split_rows("arithmetic", 40, 10, 2, 1, 2)
    assert [r.prompt_text for r in train] == [r["prompt"] for r in expected_train]
    assert [r.answer for r in eval_] == [r["answer"] for r in expected_eval]
    assert train[0].source == "task arithmetic train #1"
    assert not {r.prompt_text for r in train} & {r.prompt_text for r in eval_}


def test_prompt_splits_from_files(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    b = _write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    e = _write_jsonl(tmp_path / "e.jsonl", ROWS[:1])
    train, eval_ = tasks.prompt_splits(DataConfig(task=None, train_files=[a, b], eval_files=[e]))
    assert [r.source for r in train] == [f"{a}:row 1", f"{a}:row 2", f"{b}:row 1"]
    assert len(eval_) == 1
    with pytest.raises(ValueError, match=r"data\.train_files"):
        tasks.prompt_splits(DataConfig(task=None))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"data\.train_files=.*hold no prompt rows"):
        tasks.prompt_splits(DataConfig(task=None, train_files=[str(empty)]))


@pytest.fixture(scope="module")
def tokenizer():
    rows = tasks.generate_rows("arithmetic", 200, 0)
    texts = [init_model.render_chat([{"role": "user", "content": r["prompt"]}]) for r in rows]
    return init_model.train_tokenizer(texts, 300)


def test_encode_prompts_matches_chat_template_text(tokenizer):
    rows = data.task_prompt_rows(tasks.generate_rows("arithmetic", 5, 1), "arithmetic")
    rows.append(data.PromptRow(
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "Compute 1+1."}],
        answer=None, source="x:row 1",
    ))
    encoded = data.encode_prompts(tokenizer, rows, max_prompt_tokens=64)
    for row, ids in zip(rows, encoded):
        assert all(type(t) is int for t in ids)
        text = init_model.render_chat(row.messages, add_generation_prompt=True)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_encode_prompts_rejects_long_prompt(tokenizer):
    rows = data.task_prompt_rows([{"prompt": "Compute 123456789+987654321.", "answer": "x"}], "arithmetic")
    n = len(data.encode_prompts(tokenizer, rows, 1000)[0])
    with pytest.raises(ValueError, match=re.escape(
        f"task arithmetic #1: prompt has {n} tokens, more than data.max_prompt_tokens=10"
    )):
        data.encode_prompts(tokenizer, rows, 10)


def test_prompt_stream_epochs_cover_rows_without_partial_batches():
    stream = data.PromptStream(num_rows=10, batch_size=3, seed=5)
    epoch0 = [stream.next_batch() for _ in range(3)]
    flat = [i for b in epoch0 for i in b]
    assert len(set(flat)) == 9 and all(0 <= i < 10 for i in flat)
    assert stream.state_dict() == {"epoch": 0, "position": 9}
    nxt = stream.next_batch()
    assert stream.state_dict() == {"epoch": 1, "position": 3}
    assert len(set(nxt)) == 3
    other = data.PromptStream(num_rows=10, batch_size=3, seed=6)
    assert [other.next_batch() for _ in range(3)] != epoch0


def test_prompt_stream_resume_equals_uninterrupted():
    straight = data.PromptStream(num_rows=11, batch_size=4, seed=1)
    expected = [straight.next_batch() for _ in range(12)]
    first = data.PromptStream(num_rows=11, batch_size=4, seed=1)
    got = [first.next_batch() for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = data.PromptStream(num_rows=11, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(7)]
    assert got == expected


def test_prompt_stream_errors():
    with pytest.raises(ValueError, match=r"prompts_per_step=8 is larger than the 5 training prompts"):
        data.PromptStream(5, 8, 0)
    with pytest.raises(ValueError, match=r"prompts_per_step=0"):
        data.PromptStream(5, 0, 0)
    stream = data.PromptStream(5, 2, 0)
    with pytest.raises(ValueError, match=r"PromptStream\.load_state_dict: position=9"):
        stream.load_state_dict({"epoch": 0, "position": 9})
    with pytest.raises(ValueError, match=r"PromptStream\.load_state_dict: expected a dict"):
        stream.load_state_dict({"epoch": 0})
