"""Preference pairs: both forms, margins, every file type, and bad rows named by file, row, field."""

from __future__ import annotations

import json

import pytest

from pipeline.data.preferences import PreferencePair, load_pairs, pair_from_row, reward_input_ids

USER = {"role": "user", "content": "Compute 2+3."}
GOOD = {"role": "assistant", "content": "5"}
BAD = {"role": "assistant", "content": "6"}


def test_explicit_string_form():
    pair = pair_from_row({"prompt": "Compute 2+3.", "chosen": "5", "rejected": "6"}, "f: row 1")
    assert pair == PreferencePair([USER], [GOOD], [BAD], 0.0, "f:row 1")


def test_explicit_messages_form_with_margin():
    system = {"role": "system", "content": "Be brief."}
    pair = pair_from_row({"prompt": [system, USER], "chosen": [GOOD], "rejected": [BAD], "margin": 2}, "f: row 1")
    assert pair.prompt == [system, USER] and pair.chosen == [GOOD] and pair.margin == 2.0


def test_implicit_prompt_is_the_longest_common_prefix():
    follow = {"role": "user", "content": "And 4+4?"}
    chosen = [USER, GOOD, follow, {"role": "assistant", "content": "8"}]
    rejected = [USER, GOOD, follow, {"role": "assistant", "content": "9"}]
    pair = pair_from_row({"chosen": chosen, "rejected": rejected}, "f: row 1")
    assert pair.prompt == [USER, GOOD, follow]
    assert pair.chosen == [{"role": "assistant", "content": "8"}]
    assert pair.rejected == [{"role": "assistant", "content": "9"}]


def test_implicit_form_with_multi_turn_replies():
    follow = {"role": "user", "content": "Sure?"}
    chosen = [USER, GOOD, follow, GOOD]
    rejected = [USER, BAD]
    pair = pair_from_row({"chosen": chosen, "rejected": rejected}, "f: row 1")
    assert pair.prompt == [USER] and pair.chosen == [GOOD, follow, GOOD] and pair.rejected == [BAD]


def test_renamed_columns():
    row = {"q": "Compute 2+3.", "good": "5", "bad": "6", "gap": 0.5, "subset": "math"}
    pair = pair_from_row(row, "f: row 1", prompt_key="q", chosen_key="good", rejected_key="bad", margin_key="gap", group_key="subset")
    assert pair.chosen == [GOOD] and pair.margin == 0.5 and pair.group == "math"
    assert pair_from_row({"prompt": "p", "chosen": "c", "rejected": "r"}, "f: row 1").group == ""


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "p", "rejected": "r"}, r"field 'chosen': missing"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "group": 3}, r"field 'group': must be a string naming the pair's category"),
        ({"prompt": "p", "chosen": "c", "rejected": None}, r"field 'rejected': missing"),
        ({"chosen": "c", "rejected": "r"}, r"field 'prompt': missing; string replies need a prompt"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, r"field 'chosen': must be a string or a non-empty list"),
        ({"prompt": "p", "chosen": [], "rejected": "r"}, r"field 'chosen': must be a string or a non-empty list"),
        ({"prompt": "p", "chosen": [{"role": "bot", "content": "x"}], "rejected": "r"}, r"field 'chosen\[0\]': role 'bot' is not one of"),
        ({"prompt": "p", "chosen": [{"role": "assistant", "content": 1}], "rejected": "r"}, r"field 'chosen\[0\]': content"),
        ({"prompt": "p", "chosen": [USER], "rejected": "r"}, r"field 'chosen': the reply after the prompt must start with an assistant"),
        ({"prompt": [USER, GOOD], "chosen": "c", "rejected": "r"}, r"field 'prompt': must end with a user or system message"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}, r"field 'margin': must be a finite number"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": float("nan")}, r"field 'margin': must be a finite number"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": True}, r"field 'margin': must be a finite number"),
        ({"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "other"}, BAD]}, r"field 'chosen': without a prompt column"),
        (
            {"chosen": [USER, GOOD, {"role": "user", "content": "a"}], "rejected": [USER, GOOD, {"role": "user", "content": "b"}]},
            r"field 'chosen': the reply after the prompt must start with an assistant message, got 'user'",
        ),
        (["p", "c", "r"], r"expected an object, got list"),
    ],
)
def test_bad_rows_name_row_and_field(row, match):
    with pytest.raises(ValueError, match=r"^pairs\.jsonl: row 7: " + match if "expected" not in match else match):
        pair_from_row(row, "pairs.jsonl: row 7")


def _rows():
    return [
        {"prompt": "Compute 2+3.", "chosen": "5", "rejected": "6"},
        {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD], "margin": 1.0},
    ]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "saved"])
def test_every_file_type_loads(tmp_path, kind):
    import datasets

    rows = _rows()
    if kind == "jsonl":
        path = tmp_path / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path = tmp_path / "pairs.json"
        path.write_text(json.dumps(rows))
    else:
        # Columnar formats need one type per column: messages everywhere.
        rows = [{"prompt": [USER], "chosen": [GOOD], "rejected": [BAD], "margin": m} for m in (None, 1.0)]
        ds = datasets.Dataset.from_list(rows)
        path = tmp_path / ("pairs.parquet" if kind == "parquet" else "pairs_dir")
        ds.to_parquet(str(path)) if kind == "parquet" else ds.save_to_disk(str(path))
    pairs = load_pairs(str(path))
    assert [p.chosen for p in pairs] == [[GOOD], [GOOD]]
    assert [p.margin for p in pairs] == [0.0, 1.0]
    assert pairs[1].source == f"{path}:row 2"


def test_bad_row_in_file_names_file_row_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = _rows() + [{"prompt": "p", "chosen": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"^{path}: row 3: field 'rejected': missing"):
        load_pairs(str(path))
    with pytest.raises(ValueError, match=rf"{tmp_path / 'nope.jsonl'}: preference file does not exist"):
        load_pairs(str(tmp_path / "nope.jsonl"))
    (tmp_path / "pairs.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown preference file type"):
        load_pairs(str(tmp_path / "pairs.txt"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no preference pairs"):
        load_pairs(str(tmp_path / "empty.jsonl"))


def test_reward_input_is_the_rendered_conversation(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = reward_input_ids(tokenizer, [USER], "5")
    assert ids == list(tokenizer.apply_chat_template([USER, GOOD], tokenize=True, return_dict=False))
    assert tokenizer.decode(ids).endswith("5<|im_end|>\n")


def test_rm_stage_rejects_bad_input_before_ray_starts(tiny_model, tmp_path, refuse_ray_start):
    from pipeline.config import load_config
    from pipeline.stages.rm import run_rm

    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps(_rows()[0]) + "\n" + json.dumps({"prompt": "p", "chosen": "c", "rejected": 4}) + "\n")

    def cfg(*overrides):
        return load_config(None, [f"rm.base_path={tiny_model}", f"rm.train_files=[{bad}]",
                                  f"rm.output_dir={tmp_path / 'rm'}", *overrides])

    with pytest.raises(ValueError, match=rf"{bad}: row 2: field 'rejected'"):
        run_rm(cfg())
    with pytest.raises(ValueError, match=r"rm\.base_path \(default: sft\.output_dir\): model path .*does not exist"):
        run_rm(cfg("rm.base_path=null", f"sft.output_dir={tmp_path / 'no_sft'}"))
    with pytest.raises(ValueError, match=r"rm\.train_files: empty, and data\.task is not 'support'"):
        run_rm(cfg("rm.train_files=[]"))
    assert refuse_ray_start == [] and not (tmp_path / "rm").exists()


def test_rm_stage_encodes_pairs_as_the_reward_source_reads_them(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.config import load_config
    from pipeline.stages.rm import prepare

    good = tmp_path / "pairs.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    cfg = load_config(None, [f"rm.base_path={tiny_model}", f"rm.train_files=[{good}]", "rm.max_length=8"])
    train, held_out, pad_id = prepare(cfg)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    full = reward_input_ids(tokenizer, [USER], [GOOD])
    assert train[0][0] == full[-8:] and train[1][2] == 1.0  # the end is kept, with the margin
    assert held_out == [] and pad_id == tokenizer.pad_token_id


def test_rm_prints_held_out_accuracy_per_category():
    from pipeline.stages.rm import stats_table

    stats = {"mean": 0.1, "std": 0.5, "count": 8, "eval": {"pairwise_accuracy": 0.75, "mean_margin": 0.4, "loss": 0.5, "pairs": 4,
             "by_group": {"b": {"pairwise_accuracy": 1.0, "pairs": 1}, "a": {"pairwise_accuracy": 2 / 3, "pairs": 3}}}}
    lines = stats_table(stats).splitlines()
    assert lines[3].split()[-2:] == ["0.750", "4"]
    assert [line.split()[2] for line in lines[5:]] == ["a", "b"] and lines[5].split()[-2:] == ["0.667", "3"]
    assert len(stats_table({"mean": 0.0, "std": 1.0, "count": 2}).splitlines()) == 3  # no held-out pairs
