"""Who gets what next and taking ratings in, on a real SQLite database (no server)."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from pipeline.feedback.assign import FeedbackError, next_assignment, submit_rating, task_progress
from pipeline.feedback.rating_tasks import add_items, create_task
from pipeline.feedback.storage import Assignment, Database, Item, Rating, Rater, add_rater, rater_for_token

from tests.feedback.conftest import compare_items


def rater_id(db, token):
    return rater_for_token(db, token).id


def test_tokens_are_stored_hashed_and_checked(db, raters):
    with db.read() as s:
        stored = s.scalars(select(Rater.token_hash)).all()
    assert not set(raters.values()) & set(stored)
    assert rater_for_token(db, raters["ann"]).name == "ann"
    assert rater_for_token(db, "not-a-token") is None
    assert rater_for_token(db, "") is None
    with pytest.raises(ValueError, match="already exists"):
        add_rater(db, "ann")


def test_a_reload_shows_the_same_item_and_each_item_goes_to_one_rater(db, raters, compare_task):
    ann, bob = rater_id(db, raters["ann"]), rater_id(db, raters["bob"])
    first = next_assignment(db, ann, compare_task)
    assert next_assignment(db, ann, compare_task).assignment_id == first.assignment_id
    seen = {}
    for rater in (ann, bob):
        while (handout := next_assignment(db, rater, compare_task)) is not None:
            submit_rating(db, rater, handout.assignment_id, choice="A")
            with db.read() as s:
                item = s.get(Assignment, handout.assignment_id).item_id
            assert item not in seen, "an item went to two raters with raters_per_item=1"
            seen[item] = rater
    assert len(seen) == 6


def test_raters_per_item_caps_raters_and_nobody_gets_a_pair_twice(db, raters):
    task = create_task(db, "overlap", "compare", raters_per_item=2)
    add_items(db, task, compare_items(3))
    ids = [rater_id(db, t) for t in raters.values()]
    done = {r: [] for r in ids}
    for _ in range(4):
        for r in ids:
            handout = next_assignment(db, r, task)
            if handout is not None:
                submit_rating(db, r, handout.assignment_id, choice="tie")
                with db.read() as s:
                    done[r].append(s.get(Assignment, handout.assignment_id).item_id)
    for items in done.values():
        assert len(items) == len(set(items))
    with db.read() as s:
        per_item = s.execute(select(Rating.item_id, func.count()).group_by(Rating.item_id)).all()
    assert sorted(n for _, n in per_item) == [2, 2, 2]


def test_agreement_set_goes_to_every_rater_the_asked_number_of_times(db, raters):
    task = create_task(db, "agree", "compare")
    add_items(db, task, compare_items(4), agreement_items=2, agreement_repeats=2, seed=1)
    counts = {}
    for token in raters.values():
        r = rater_id(db, token)
        rounds = []
        while (handout := next_assignment(db, r, task)) is not None:
            rounds.append(handout.round)
            submit_rating(db, r, handout.assignment_id, choice="B")
        counts[r] = rounds
        # New items first, repeats only after them.
        assert rounds == sorted(rounds)
    with db.read() as s:
        shared = s.scalars(select(Item.id).where(Item.max_raters.is_(None))).all()
        per_item = dict(s.execute(select(Rating.item_id, func.count()).group_by(Rating.item_id)).all())
    assert len(shared) == 2
    assert all(per_item[i] == 3 * 2 for i in shared)  # 3 raters x 2 rounds
    assert sum(per_item.values()) == 6 * 2 + 2  # plus the two ordinary items, one rating each


def test_blind_order_is_undone_before_storing(db, raters, compare_task):
    ann = rater_id(db, raters["ann"])
    orders, rng = [], random.Random(3)
    while (handout := next_assignment(db, ann, compare_task, rng=rng)) is not None:
        with db.read() as s:
            assignment = s.get(Assignment, handout.assignment_id)
            item = s.get(Item, assignment.item_id)
        orders.append(assignment.swapped)
        # The rater picks whatever is shown as A; storage must name the item's reply behind it.
        submit_rating(db, ann, handout.assignment_id, choice="A")
        with db.read() as s:
            rating = s.scalar(select(Rating).where(Rating.assignment_id == handout.assignment_id))
        expected = "b" if assignment.swapped else "a"
        assert rating.preference == expected
        assert handout.replies["A"] == (item.reply_b if assignment.swapped else item.reply_a)
    assert True in orders and False in orders


def test_refusals_name_the_problem(db, raters, compare_task, rate_task):
    ann, bob = rater_id(db, raters["ann"]), rater_id(db, raters["bob"])
    pair = next_assignment(db, ann, compare_task)
    score = next_assignment(db, ann, rate_task)
    cases = [
        (dict(assignment_id=pair.assignment_id, choice="C"), 422, "choice"),
        (dict(assignment_id=pair.assignment_id, score=3), 422, "send 'choice'"),
        (dict(assignment_id=score.assignment_id, score=6), 422, "score"),
        (dict(assignment_id=score.assignment_id, score=True), 422, "score"),
        (dict(assignment_id=score.assignment_id, choice="A"), 422, "send 'score'"),
        (dict(assignment_id=999, choice="A"), 404, "no assignment 999"),
        (dict(assignment_id=pair.assignment_id, choice="A", comment=5), 422, "comment"),
    ]
    for kwargs, status, words in cases:
        with pytest.raises(FeedbackError, match=words) as info:
            submit_rating(db, ann, **kwargs)
        assert info.value.status == status
    with pytest.raises(FeedbackError, match="no assignment") as info:
        submit_rating(db, bob, pair.assignment_id, choice="A")  # someone else's assignment
    assert info.value.status == 404
    submit_rating(db, ann, pair.assignment_id, choice="A", comment="clear")
    with pytest.raises(FeedbackError, match="already rated") as info:
        submit_rating(db, ann, pair.assignment_id, choice="B")
    assert info.value.status == 409
    with pytest.raises(FeedbackError, match="no task 77"):
        next_assignment(db, ann, 77)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == 1


def test_an_unrated_assignment_expires_and_frees_its_seat(db, raters, compare_task):
    ann, bob = rater_id(db, raters["ann"]), rater_id(db, raters["bob"])
    held = [next_assignment(db, ann, compare_task)]
    taken_by_bob = []
    while (handout := next_assignment(db, bob, compare_task)) is not None:
        submit_rating(db, bob, handout.assignment_id, choice="A")
        taken_by_bob.append(handout.assignment_id)
    assert len(taken_by_bob) == 5  # ann holds the sixth
    late = next_assignment(db, bob, compare_task, ttl=timedelta(seconds=-1))  # ann's has expired
    assert late is not None and late.prompt == held[0].prompt
    with pytest.raises(FeedbackError, match="expired"):
        submit_rating(db, ann, held[0].assignment_id, choice="A")


def test_two_database_handles_racing_never_double_assign(tmp_path):
    """Two engines on one file stand for two server processes; the constraints arbitrate."""
    path = str(tmp_path / "race.db")
    first, second = Database(path), Database(path)
    task = create_task(first, "race", "compare")
    add_items(first, task, compare_items(40))
    ids = [rater_id(first, add_rater(first, f"r{i}")) for i in range(6)]
    errors = []

    def work(database, rater):
        try:
            while (handout := next_assignment(database, rater, task)) is not None:
                submit_rating(database, rater, handout.assignment_id, choice="tie")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=((first, second)[i % 2], r)) for i, r in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with first.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == 40
        assert s.scalar(select(func.count(func.distinct(Rating.item_id)))) == 40


def test_progress_counts_what_is_left(db, raters, compare_task):
    ann = rater_id(db, raters["ann"])
    handout = next_assignment(db, ann, compare_task)
    submit_rating(db, ann, handout.assignment_id, choice="A")
    (entry,) = [t for t in task_progress(db, ann) if t["id"] == compare_task]
    assert entry["rated_by_you"] == 1 and entry["left_for_you"] == 5 and entry["items"] == 6


def test_a_seat_taken_between_check_and_insert_is_retried(db, raters, monkeypatch):
    """What two servers racing on PostgreSQL look like: the check passed, the insert collides."""
    from pipeline.feedback import assign

    task = create_task(db, "one-seat", "compare")
    add_items(db, task, compare_items(2))
    ann, bob = rater_id(db, raters["ann"]), rater_id(db, raters["bob"])
    first = next_assignment(db, ann, task)
    with db.read() as s:
        taken = s.get(Assignment, first.assignment_id)
        stale = (taken.item_id, taken.seat, 0)  # what bob's server saw before ann's insert
    real, calls = assign._next_candidate, []

    def raced(session, task_id, rater):
        calls.append(rater)
        return stale if len(calls) == 1 else real(session, task_id, rater)

    monkeypatch.setattr(assign, "_next_candidate", raced)
    second = next_assignment(db, bob, task)
    assert len(calls) == 2 and second.prompt != first.prompt
    with db.read() as s:
        assert s.get(Assignment, second.assignment_id).item_id != stale[0]
