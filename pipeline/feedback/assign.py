"""Who gets what next, and taking a rating in.

Rules:

* a rater keeps their open assignment of a task until they rate it (a reload shows the same
  pair), so nobody holds two items of one task at once;
* an item goes to at most ``max_raters`` distinct raters, and a rater gets it at most
  ``repeats`` times (1 unless the item is in an agreement set); a repeat is offered only after
  the earlier round is rated, and items nobody has rated yet come first;
* assignments left unrated for ``ttl`` are freed for others.

Each decision runs in one transaction and is guarded by unique constraints
(:class:`pipeline.feedback.storage.Assignment`): two servers handing out the last seat of an
item at once collide on the constraint, one of them retries with the next item. Nothing here
relies on an in-process lock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from pipeline.feedback.storage import (
    Assignment,
    Comment,
    Database,
    Item,
    Rating,
    Task,
    utcnow,
)

DEFAULT_TTL = timedelta(hours=1)
_RETRIES = 50
CHOICES = ("A", "B", "tie", "both_bad")
"""What a rater answers on a comparison: A and B are the positions shown, not the models."""


class FeedbackError(ValueError):
    """A request the app refuses; ``status`` is the HTTP status the server answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Handout:
    """An assignment as the rater sees it: replies in the (blind) order shown."""

    assignment_id: int
    task_id: int
    kind: str
    prompt: list
    replies: dict[str, str]
    """``{"A": ..., "B": ...}`` for comparisons, ``{"reply": ...}`` for ratings."""
    round: int

    def to_json(self) -> dict:
        return {"assignment_id": self.assignment_id, "task_id": self.task_id, "kind": self.kind,
                "prompt": self.prompt, "replies": self.replies, "round": self.round}


def get_task(session, task_id: int, kinds: tuple[str, ...] = ("compare", "rate", "chat")) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise FeedbackError(404, f"no task {task_id}")
    if task.kind not in kinds:
        raise FeedbackError(400, f"task {task_id} is a {task.kind} task, not {' or '.join(kinds)}")
    return task


def _handout(task: Task, item: Item, assignment: Assignment) -> Handout:
    if task.kind == "compare":
        first, second = (item.reply_b, item.reply_a) if assignment.swapped else (item.reply_a, item.reply_b)
        replies = {"A": first, "B": second}
    else:
        replies = {"reply": item.reply_a}
    return Handout(assignment.id, task.id, task.kind, item.prompt, replies, assignment.round)


def _candidate_query(task_id: int, rater_id: int):
    """Items the rater may get next, best first: (item id, rounds the rater had, their seat)."""
    mine = (
        select(Assignment.item_id, func.count().label("rounds"), func.min(Assignment.seat).label("seat"))
        .where(Assignment.task_id == task_id, Assignment.rater_id == rater_id)
        .group_by(Assignment.item_id)
        .subquery()
    )
    everyone = (
        select(Assignment.item_id, func.count(func.distinct(Assignment.rater_id)).label("raters"))
        .where(Assignment.task_id == task_id)
        .group_by(Assignment.item_id)
        .subquery()
    )
    rounds = func.coalesce(mine.c.rounds, 0)
    raters = func.coalesce(everyone.c.raters, 0)
    return (
        select(Item.id, rounds.label("rounds"), mine.c.seat)
        .outerjoin(mine, mine.c.item_id == Item.id)
        .outerjoin(everyone, everyone.c.item_id == Item.id)
        .where(
            Item.task_id == task_id,
            rounds < Item.repeats,
            or_(rounds > 0, Item.max_raters.is_(None), raters < Item.max_raters),
        )
        # New items before repeats, items with fewer raters first, then an order of the
        # rater's own so that raters starting together do not all reach for the same item.
        .order_by(rounds > 0, raters, (Item.id * 7919 + rater_id * 104729) % 1000003)
    )


def _next_candidate(session, task_id: int, rater_id: int) -> Optional[tuple[int, int, int]]:
    """(item id, seat to take, round) of the best candidate, or ``None``."""
    row = session.execute(_candidate_query(task_id, rater_id).limit(1)).first()
    if row is None:
        return None
    item_id, rounds, seat = row
    if rounds == 0:
        # A new rater of this item takes its lowest free seat (freed seats are reused).
        taken = set(session.scalars(
            select(Assignment.seat).where(Assignment.item_id == item_id, Assignment.round == 0)
        ))
        seat = min(set(range(len(taken) + 1)) - taken)
    return item_id, seat, rounds


def next_assignment(db: Database, rater_id: int, task_id: int, ttl: timedelta = DEFAULT_TTL,
                    rng: Optional[random.Random] = None) -> Optional[Handout]:
    """The rater's open assignment of the task, or a new one; ``None`` when nothing is left."""
    rng = rng or random.SystemRandom()
    for _ in range(_RETRIES):
        try:
            with db.write() as s:
                task = get_task(s, task_id, ("compare", "rate"))
                current = s.scalar(
                    select(Assignment)
                    .where(Assignment.task_id == task_id, Assignment.rater_id == rater_id, Assignment.status == "open")
                    .order_by(Assignment.id)
                    .limit(1)
                )
                if current is not None:
                    return _handout(task, s.get(Item, current.item_id), current)
                s.execute(delete(Assignment).where(
                    Assignment.task_id == task_id, Assignment.status == "open",
                    Assignment.created_at < utcnow() - ttl,
                ))
                picked = _next_candidate(s, task_id, rater_id)
                if picked is None:
                    return None
                item_id, seat, round_ = picked
                assignment = Assignment(
                    item_id=item_id, task_id=task_id, rater_id=rater_id, seat=seat, round=round_,
                    swapped=task.kind == "compare" and rng.random() < 0.5,
                )
                s.add(assignment)
                s.flush()  # the unique constraints are checked here
                return _handout(task, s.get(Item, item_id), assignment)
        except IntegrityError:
            continue  # another server took that seat first: choose again
    raise FeedbackError(503, f"task {task_id}: could not hand out an item after {_RETRIES} tries (too much contention)")


def _preference(choice, swapped: bool) -> str:
    if choice not in CHOICES:
        raise FeedbackError(422, f"field 'choice': must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice in ("A", "B"):
        shown_first = choice == "A"
        return "a" if shown_first != swapped else "b"
    return choice


def _score(score) -> int:
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score.strip())
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise FeedbackError(422, f"field 'score': must be an integer from 1 to 5; got {score!r}")
    return score


def submit_rating(db: Database, rater_id: int, assignment_id: int, *, choice=None, score=None,
                  comment: Optional[str] = None) -> int:
    """Store the rating of an assignment (committed when this returns); returns its id.

    Refuses an unknown assignment or another rater's (404), a second rating (409) and a
    malformed one (422), each with a message that says what was wrong.
    """
    if comment is not None and not isinstance(comment, str):
        raise FeedbackError(422, f"field 'comment': must be a string; got {type(comment).__name__}")
    comment = (comment or "").strip()
    if len(comment) > 5000:
        raise FeedbackError(422, f"field 'comment': at most 5000 characters; got {len(comment)}")
    try:
        with db.write() as s:
            assignment = s.get(Assignment, assignment_id)
            if assignment is None or assignment.rater_id != rater_id:
                raise FeedbackError(404, f"no assignment {assignment_id} for you (expired, or never handed out)")
            if assignment.status == "done":
                raise FeedbackError(409, f"assignment {assignment_id} is already rated; a rating cannot be submitted twice")
            task = s.get(Task, assignment.task_id)
            preference, value = None, None
            if task.kind == "compare":
                if score is not None:
                    raise FeedbackError(422, f"task {task.id} compares two replies: send 'choice', not 'score'")
                preference = _preference(choice, assignment.swapped)
            else:
                if choice is not None:
                    raise FeedbackError(422, f"task {task.id} rates one reply: send 'score' (1-5), not 'choice'")
                value = _score(score)
            rating = Rating(
                assignment_id=assignment.id, item_id=assignment.item_id, task_id=task.id, rater_id=rater_id,
                preference=preference, score=value,
                seconds=(utcnow() - assignment.created_at).total_seconds(),
            )
            s.add(rating)
            assignment.status = "done"
            s.flush()
            if comment:
                s.add(Comment(rater_id=rater_id, rating_id=rating.id, text=comment))
            return rating.id
    except IntegrityError:
        # Two submissions of one assignment raced past the status check: the unique
        # assignment_id of ratings let exactly one in.
        raise FeedbackError(409, f"assignment {assignment_id} is already rated; a rating cannot be submitted twice") from None


def task_progress(db: Database, rater_id: int) -> list[dict]:
    """Per task: how many ratings this rater gave and how many items are still open to them."""
    out = []
    with db.read() as s:
        for task in s.scalars(select(Task).order_by(Task.id)):
            done = s.scalar(select(func.count()).select_from(Rating).where(
                Rating.task_id == task.id, Rating.rater_id == rater_id)) or 0
            left = None
            if task.kind != "chat":
                candidates = _candidate_query(task.id, rater_id).order_by(None).subquery()
                left = s.scalar(select(func.count()).select_from(candidates)) or 0
                left += s.scalar(select(func.count()).select_from(Assignment).where(
                    Assignment.task_id == task.id, Assignment.rater_id == rater_id, Assignment.status == "open")) or 0
            items = s.scalar(select(func.count()).select_from(Item).where(Item.task_id == task.id)) or 0
            out.append({"id": task.id, "name": task.name, "kind": task.kind, "items": items,
                        "rated_by_you": done, "left_for_you": left, "instructions": task.instructions})
    return out

