"""Agreement, win rates and the export files, against numbers worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.feedback.assign import next_assignment, submit_rating
from pipeline.feedback.export import export
from pipeline.feedback.rating_tasks import add_items, create_task
from pipeline.feedback.stats import cohen_kappa, format_report, report, wilson_interval
from pipeline.feedback.storage import Assignment, Item, rater_for_token

from tests.feedback.conftest import compare_items, rate_items


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.7, p_e 0.5, kappa 0.4.
    first = ["y"] * 25 + ["n"] * 25
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))  # chance agreement is certain
    # Quadratic weights: opposite ends of the scale are total disagreement.
    assert cohen_kappa([1, 5], [5, 1], "quadratic") == pytest.approx(-1.0)
    assert cohen_kappa([1, 2, 3, 4], [1, 2, 3, 5], "quadratic") > cohen_kappa([1, 2, 3, 4], [1, 2, 3, 5])


def test_wilson_interval_of_8_in_10():
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] < 0.8


def _rate_all(db, rater_token, task, answer):
    rater = rater_for_token(db, rater_token).id
    while (handout := next_assignment(db, rater, task)) is not None:
        with db.read() as s:
            assignment = s.get(Assignment, handout.assignment_id)
            item = s.get(Item, assignment.item_id)
        submit_rating(db, rater, handout.assignment_id, **answer(item, assignment, handout))


def test_win_rate_agreement_and_pairs_from_scripted_raters(db, raters, tmp_path):
    task = create_task(db, "new-vs-old", "compare", raters_per_item=2)
    add_items(db, task, compare_items(10))

    def prefers_new(item, assignment, handout):
        # Prefers model "new" (reply_a) on items 0-7, calls 8 a tie and 9 both bad; the
        # answer is given in shown positions, so the blind order must be undone.
        index = int(item.source.rsplit(" ", 1)[1])
        if index == 8:
            return {"choice": "tie"}
        if index == 9:
            return {"choice": "both_bad"}
        return {"choice": "B" if assignment.swapped else "A"}

    _rate_all(db, raters["ann"], task, prefers_new)
    _rate_all(db, raters["bob"], task, prefers_new)
    data = report(db)
    (entry,) = data["tasks"]
    (win,) = entry["win_rates"]
    assert (win["model_a"], win["model_b"]) == ("new", "old")
    assert (win["wins"], win["losses"], win["ties"], win["both_bad"], win["n"]) == (16, 0, 2, 2, 18)
    assert win["win_rate"] == pytest.approx(17 / 18)
    assert (win["low"], win["high"]) == pytest.approx(wilson_interval(17, 18))
    (pair,) = entry["agreement"]["pairs"]
    assert pair["items"] == 10 and pair["kappa"] == pytest.approx(1.0)
    assert {r["rater"]: r["compare"] for r in data["raters"]} == {"ann": 10, "bob": 10, "cy": 0}
    assert "win rate of new over old: 0.944" in format_report(data)

    path, counts = export(db, "pairs", str(tmp_path / "pairs.jsonl"))
    rows = [json.loads(line) for line in open(path)]
    assert counts["pairs"] == 8 and counts["no majority"] == 2
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"][0]["role"] == "user"
        assert row["chosen"] == [{"role": "assistant", "content": row["chosen"][0]["content"]}]
        assert row["chosen"][0]["content"].endswith("from new")
        assert row["rejected"][0]["content"].endswith("from old")


def test_reward_file_maps_scores_to_unit_interval(db, raters, tmp_path):
    task = create_task(db, "scores", "rate", raters_per_item=2)
    add_items(db, task, rate_items(2))
    _rate_all(db, raters["ann"], task, lambda item, a, h: {"score": 5 if item.reply_a == "reply 0" else 1})
    _rate_all(db, raters["bob"], task, lambda item, a, h: {"score": 4 if item.reply_a == "reply 0" else 2})
    path, counts = export(db, "rewards", str(tmp_path / "rewards.json"))
    rows = {row["completion"]: row for row in json.load(open(path))}
    assert rows["reply 0"]["score"] == 4.5 and rows["reply 0"]["reward"] == pytest.approx(0.875)
    assert rows["reply 1"]["score"] == 1.5 and rows["reply 1"]["reward"] == pytest.approx(0.125)
    assert rows["reply 0"]["ratings"] == 2 and rows["reply 0"]["messages"][0]["content"] == "question 0"
    entry = report(db)["tasks"][0]
    assert entry["agreement"]["weights"] == "quadratic" and entry["agreement"]["pairs"][0]["kappa"] > 0.5


def test_self_agreement_on_repeated_items(db, raters):
    task = create_task(db, "repeat", "compare")
    add_items(db, task, compare_items(3), agreement_items=3, agreement_repeats=2)
    answers = iter(["tie", "tie", "tie", "tie", "tie", "both_bad"])  # one change of mind in 3 repeats
    _rate_all(db, raters["ann"], task, lambda item, a, h: {"choice": next(answers)})
    entry = report(db, ["repeat"])["tasks"][0]
    assert entry["agreement"]["self"]["items"] == 3
    assert entry["agreement"]["self"]["agree"] == pytest.approx(2 / 3)


def test_export_refuses_unknown_tasks_and_empty_results(db, raters, compare_task, tmp_path):
    with pytest.raises(ValueError, match="--task 'nope': no such task"):
        export(db, "pairs", str(tmp_path / "x.jsonl"), ["nope"])
    with pytest.raises(ValueError, match="nothing to export"):
        export(db, "pairs", str(tmp_path / "x.jsonl"))
    with pytest.raises(ValueError, match=".jsonl, .json or .parquet"):
        from pipeline.feedback.export import write_rows

        write_rows([{"a": 1}], str(tmp_path / "x.csv"))


def test_parquet_export_reads_back(db, raters, compare_task, tmp_path):
    import pyarrow.parquet as pq

    _rate_all(db, raters["ann"], compare_task, lambda item, a, h: {"choice": "A"})
    path, _ = export(db, "pairs", str(tmp_path / "pairs.parquet"))
    table = pq.read_table(path).to_pylist()
    assert len(table) == 6 and table[0]["chosen"][0]["role"] == "assistant"
