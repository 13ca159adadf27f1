"""A real ``rayppo feedback serve`` (uvicorn processes) under load and under SIGKILL."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import httpx
import pytest
from sqlalchemy import func, select, text

from pipeline.feedback.rating_tasks import add_items, create_task
from pipeline.feedback.storage import Assignment, Item, Rating, add_rater

from tests.feedback.conftest import compare_items

pytestmark = pytest.mark.integration


class ScriptedRater(threading.Thread):
    """Asks for the next pair and answers it, until the deadline or the server goes away. Now
    and then reloads before answering (must get the same pair) or submits twice (must get 409)."""

    def __init__(self, url: str, token: str, task_id: int, deadline: float, index: int):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.task_id, self.deadline, self.index = task_id, deadline, index
        self.confirmed: dict[int, int] = {}  # assignment id -> rating id, answered with 201
        self.handed_out: list[tuple[int, str]] = []  # (assignment id, prompt text)
        self.reloads = self.doubles = 0
        self.problems: list[str] = []
        self.failure: Exception | None = None

    def next_pair(self):
        r = self.client.post(f"/api/tasks/{self.task_id}/next")
        r.raise_for_status()
        return r.json()["assignment"]

    def run(self) -> None:
        try:
            n = 0
            while time.monotonic() < self.deadline:
                handout = self.next_pair()
                if handout is None:
                    return
                n += 1
                aid = handout["assignment_id"]
                if n % 7 == 0:
                    self.reloads += 1
                    if self.next_pair()["assignment_id"] != aid:
                        self.problems.append(f"reload of {aid} gave another pair")
                self.handed_out.append((aid, handout["prompt"][0]["content"]))
                choice = ("A", "B", "tie", "both_bad")[(n + self.index) % 4]
                r = self.client.post(f"/api/assignments/{aid}/rating", json={"choice": choice})
                if r.status_code != 201:
                    self.problems.append(f"rating of {aid}: {r.status_code} {r.text}")
                    continue
                self.confirmed[aid] = r.json()["rating_id"]
                if n % 11 == 0:
                    self.doubles += 1
                    again = self.client.post(f"/api/assignments/{aid}/rating", json={"choice": "A"})
                    if again.status_code != 409:
                        self.problems.append(f"double submit of {aid}: {again.status_code}")
        except Exception as exc:  # a killed server, or a real failure the test reports
            self.failure = exc


def _check_database(db, raters_per_item: int | None) -> dict:
    with db.read() as s:
        assert s.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        per_item = s.execute(select(Assignment.item_id, func.count(), func.count(func.distinct(Assignment.rater_id)))
                             .group_by(Assignment.item_id)).all()
        for item, count, distinct in per_item:
            assert count == distinct, f"item {item} went to one rater twice"
            if raters_per_item is not None:
                assert distinct <= raters_per_item, f"item {item} has {distinct} raters"
        done = set(s.scalars(select(Assignment.id).where(Assignment.status == "done")))
        rated = set(s.scalars(select(Rating.assignment_id)))
        assert done == rated, "a rating without its assignment marked done (or the reverse)"
        return {row.id: row.assignment_id for row in s.execute(select(Rating.id, Rating.assignment_id))}


def test_eight_raters_at_once_for_30_seconds_lose_nothing(db, live_server):
    task = create_task(db, "load", "compare", raters_per_item=3)
    add_items(db, task, compare_items(3000))
    tokens = [add_rater(db, f"rater{i}") for i in range(8)]
    server = live_server(workers=2)  # two processes sharing the SQLite file
    deadline = time.monotonic() + 30
    raters = [ScriptedRater(server.url, token, task, deadline, i) for i, token in enumerate(tokens)]
    for rater in raters:
        rater.start()
    for rater in raters:
        rater.join(timeout=120)
    for rater in raters:
        assert rater.failure is None, repr(rater.failure)
        assert not rater.problems, rater.problems[:5]
    stored = _check_database(db, raters_per_item=3)
    confirmed = {rid: aid for r in raters for aid, rid in r.confirmed.items()}
    assert confirmed.items() <= stored.items(), "a confirmed rating is missing"
    assert len(stored) == len(confirmed), "the database holds ratings nobody was told about"
    handed = [aid for r in raters for aid, _ in r.handed_out]
    assert len(handed) == len(set(handed)), "one assignment was handed to two raters"
    for r in raters:
        prompts = [p for _, p in r.handed_out]
        assert len(prompts) == len(set(prompts)), "a rater got the same pair twice"
    assert sum(r.reloads for r in raters) > 0 and sum(r.doubles for r in raters) > 0
    total = len(confirmed)
    print(f"\n8 raters x 30 s: {total} ratings ({total / 30:.0f}/s), "
          f"{sum(r.doubles for r in raters)} double submits refused")
    assert total > 100


def test_sigkill_mid_request_loses_nothing_already_stored(db, live_server):
    task = create_task(db, "kill", "compare", raters_per_item=2)
    add_items(db, task, compare_items(2000))
    tokens = [add_rater(db, f"k{i}") for i in range(4)]
    server = live_server()
    raters = [ScriptedRater(server.url, token, task, time.monotonic() + 60, i) for i, token in enumerate(tokens)]
    for rater in raters:
        rater.start()
    # The raters stop at their own 60 s deadline, so waiting longer than that cannot help.
    deadline = time.monotonic() + 60
    while sum(len(r.confirmed) for r in raters) < 100:
        if time.monotonic() > deadline or not any(r.is_alive() for r in raters):
            pytest.fail(f"waited 60 s for 100 confirmed ratings before the kill; got "
                        f"{sum(len(r.confirmed) for r in raters)}, rater failures: "
                        f"{[repr(r.failure) for r in raters if r.failure]}, problems: "
                        f"{[p for r in raters for p in r.problems][:5]}")
        time.sleep(0.05)
    server.kill()  # SIGKILL, requests in flight
    for rater in raters:
        rater.join(timeout=60)
    assert all(r.failure is not None for r in raters), "the raters should have lost the server"
    stored = _check_database(db, raters_per_item=2)
    confirmed = {rid: aid for r in raters for aid, rid in r.confirmed.items()}
    assert confirmed.items() <= stored.items(), "a rating confirmed before the kill is gone"

    # The restarted server carries on: a pair whose answer never got its 201 is either stored
    # (a resend gets 409) or still open (the rater is handed it again and can answer it).
    restarted = live_server()
    for rater, token in zip(raters, tokens):
        client = httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        unconfirmed = [aid for aid, _ in rater.handed_out if aid not in rater.confirmed]
        handout = client.post(f"/api/tasks/{task}/next").json()["assignment"]
        for aid in unconfirmed:
            r = client.post(f"/api/assignments/{aid}/rating", json={"choice": "tie"})
            assert r.status_code in (201, 409), r.text
        assert handout is not None
    after = _check_database(db, raters_per_item=2)
    assert stored.items() <= after.items()
