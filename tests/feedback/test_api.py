"""The app's HTTP surface (FastAPI's test client on the real app and a real database):
authentication, refusals with clear messages, the pages' forms, and live chat on a tiny model."""

from __future__ import annotations

import html
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from pipeline.feedback.live_chat import ChatModels
from pipeline.feedback.rating_tasks import NewItem, add_items, create_task
from pipeline.feedback.server import create_app
from pipeline.feedback.storage import ChatMessage, Rating
from pipeline.feedback.web import COOKIE


@pytest.fixture
def client(db):
    with TestClient(create_app(db, ChatModels("hf"))) as c:
        yield c


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_nothing_is_reachable_without_a_valid_token(client, raters, compare_task):
    for path in ("/api/me", "/api/tasks", "/api/nothing-here"):
        for headers in ({}, bearer("wrong"), {"Authorization": "Basic abc"}):
            r = client.get(path, headers=headers)
            assert r.status_code == 401 and "token" in r.json()["error"]
    assert client.post(f"/api/tasks/{compare_task}/next").status_code == 401
    for path in ("/", f"/tasks/{compare_task}", "/static/chat.js", "/elsewhere"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert client.get("/login").status_code == 200
    client.cookies.set(COOKIE, "forged")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_api_rating_flow_and_refusals(client, raters, compare_task, rate_task):
    auth = bearer(raters["ann"])
    assert client.get("/api/me", headers=auth).json()["name"] == "ann"
    handout = client.post(f"/api/tasks/{compare_task}/next", headers=auth).json()["assignment"]
    assert set(handout["replies"]) == {"A", "B"} and handout["prompt"][0]["role"] == "user"
    url = f"/api/assignments/{handout['assignment_id']}/rating"
    refusals = [
        (b"{not json", 422, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({"choice": "A", "scor": 3}).encode(), 422, "unknown field 'scor'"),
        (json.dumps({"choice": "left"}).encode(), 422, "field 'choice'"),
        (json.dumps({"score": 4}).encode(), 422, "send 'choice'"),
        (json.dumps({}).encode(), 422, "field 'choice'"),
    ]
    for body, status, words in refusals:
        r = client.post(url, content=body, headers=auth)
        assert r.status_code == status and words in r.json()["error"], (body, r.text)
    r = client.post(url, json={"choice": "B", "comment": "B explains more"}, headers=auth)
    assert r.status_code == 201
    r = client.post(url, json={"choice": "A"}, headers=auth)
    assert r.status_code == 409 and "already rated" in r.json()["error"]
    r = client.post(url, json={"choice": "A"}, headers=bearer(raters["bob"]))
    assert r.status_code == 404
    assert client.post("/api/tasks/999/next", headers=auth).json()["error"] == "no task 999"
    r = client.post("/api/tasks/abc/next", headers=auth)
    assert r.status_code == 422 and "task_id" in r.json()["error"]
    r = client.post("/api/assignments/999/rating", json={"choice": "A"}, headers=auth)
    assert r.status_code == 404 and "no assignment 999" in r.json()["error"]
    scored = client.post(f"/api/tasks/{rate_task}/next", headers=auth).json()["assignment"]
    r = client.post(f"/api/assignments/{scored['assignment_id']}/rating", json={"score": 0}, headers=auth)
    assert r.status_code == 422 and "1 to 5" in r.json()["error"]
    assert client.post(f"/api/assignments/{scored['assignment_id']}/rating", json={"score": 5},
                       headers=auth).status_code == 201
    tasks = {t["id"]: t for t in client.get("/api/tasks", headers=auth).json()["tasks"]}
    assert tasks[compare_task]["rated_by_you"] == 1 and tasks[rate_task]["left_for_you"] == 3


def test_pages_log_in_rate_and_refuse_a_double_submit(client, raters, db):
    task = create_task(db, "escape", "compare")
    add_items(db, task, [NewItem([{"role": "user", "content": "hi"}], "<script>alert(1)</script>", "plain")])
    r = client.post("/login", data={"token": "bad", "next": "/"}, follow_redirects=False)
    assert r.status_code == 401 and "not valid" in r.text
    r = client.post("/login", data={"token": raters["ann"], "next": "//evil.example/x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=strict" in r.headers["set-cookie"]
    page = client.get(f"/tasks/{task}")
    assert page.status_code == 200 and "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    action = page.text.split('action="/assignments/')[1].split('"')[0]
    r = client.post(f"/assignments/{action}", data={"choice": "tie", "comment": "same"}, follow_redirects=False)
    assert r.status_code == 303 and "saved=" in r.headers["location"]
    assert "Nothing is left" in client.get(r.headers["location"]).text
    again = client.post(f"/assignments/{action}", data={"choice": "A"})
    assert again.status_code == 409 and "already rated" in again.text
    bad = client.post(f"/assignments/{action}", data={"choice": "A", "extra": "1"})
    assert bad.status_code == 422 and "unknown field 'extra'" in html.unescape(bad.text)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == 1


def test_live_chat_streams_stores_and_takes_one_vote(client, raters, db, tiny_model, tmp_path):
    task = create_task(db, "talk", "chat", chat_model=tiny_model,
                       settings={"temperature": 0.0, "max_tokens": 6, "system": "be brief"})
    auth = bearer(raters["ann"])
    session = client.post(f"/api/tasks/{task}/chats", headers=auth).json()["session_id"]
    for turn in ("hello", "and again"):
        with client.stream("POST", f"/api/chats/{session}/messages", json={"content": turn}, headers=auth) as r:
            assert r.status_code == 200
            events = [json.loads(line) for line in r.iter_lines() if line]
        deltas = "".join(e.get("delta", "") for e in events)
        assert events[-1]["done"] and events[-1]["content"] == deltas
    view = client.get(f"/api/chats/{session}", headers=auth).json()
    assert [m["role"] for m in view["messages"]] == ["user", "assistant", "user", "assistant"]
    reply, question = view["messages"][1], view["messages"][0]
    vote = f"/api/chat-messages/{reply['id']}/vote"
    assert client.post(vote, json={"vote": "sideways"}, headers=auth).status_code == 422
    assert client.post(vote, json={"vote": "up", "comment": "fine"}, headers=auth).status_code == 200
    r = client.post(vote, json={"vote": "down"}, headers=auth)
    assert r.status_code == 409 and "already has your vote" in r.json()["error"]
    r = client.post(f"/api/chat-messages/{question['id']}/vote", json={"vote": "up"}, headers=auth)
    assert r.status_code == 422 and "not a reply" in r.json()["error"]
    assert client.get(f"/api/chats/{session}", headers=bearer(raters["bob"])).status_code == 404
    r = client.post(f"/api/chats/{session}/messages", json={"content": ""}, headers=auth)
    assert r.status_code == 422 and "content" in r.json()["error"]
    assert client.post(f"/api/tasks/{task}/next", headers=auth).status_code == 400
    with db.read() as s:
        assert s.scalar(select(ChatMessage.vote).where(ChatMessage.id == reply["id"])) == 1

    from pipeline.feedback.export import export

    path, counts = export(db, "rewards", str(tmp_path / "votes.jsonl"), ["talk"])
    (row,) = [json.loads(line) for line in open(path)]
    assert row["reward"] == 1.0 and row["messages"][0] == {"role": "system", "content": "be brief"}
    assert row["messages"][-1] == {"role": "user", "content": "hello"} and row["completion"] == reply["content"]
