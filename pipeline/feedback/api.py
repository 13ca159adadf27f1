"""The JSON API (``/api/...``): what scripts, tests and the chat page's script talk to.

Handlers run the database work in the thread pool, so a write waiting for SQLite's lock never
stalls the event loop. Bodies are JSON objects; a field that is missing, unknown or of the wrong type is refused with
422 and a message naming it. Errors are ``{"error": "..."}`` with the status that fits: 401 no
valid token, 404 unknown task / assignment / chat, 409 a second rating of one assignment, 422
malformed. A rating is committed before the 201 that confirms it.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from pipeline.feedback import assign, live_chat
from pipeline.feedback.assign import FeedbackError

RATING_FIELDS = ("choice", "score", "comment")
MAX_BODY = 64 * 1024


async def json_body(request: Request, allowed: tuple[str, ...]) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise FeedbackError(413, f"request body is {len(raw)} bytes; at most {MAX_BODY}")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedbackError(422, f"request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise FeedbackError(422, f"request body must be a JSON object with {', '.join(allowed)}; got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise FeedbackError(422, f"unknown field {unknown[0]!r}: expected {', '.join(allowed)}")
    return body


def register(app: FastAPI) -> None:
    db = app.state.db

    @app.get("/api/me")
    def me(request: Request):
        rater = request.state.rater
        return {"id": rater.id, "name": rater.name}

    @app.get("/api/tasks")
    def tasks(request: Request):
        return {"tasks": assign.task_progress(db, request.state.rater.id)}

    @app.post("/api/tasks/{task_id}/next")
    def next_item(request: Request, task_id: int):
        handout = assign.next_assignment(db, request.state.rater.id, task_id)
        return {"assignment": handout.to_json() if handout else None}

    @app.post("/api/assignments/{assignment_id}/rating", status_code=201)
    async def rate(request: Request, assignment_id: int):
        body = await json_body(request, RATING_FIELDS)
        rating_id = await run_in_threadpool(
            assign.submit_rating, db, request.state.rater.id, assignment_id,
            choice=body.get("choice"), score=body.get("score"), comment=body.get("comment"),
        )
        return {"rating_id": rating_id, "assignment_id": assignment_id}

    @app.post("/api/tasks/{task_id}/chats", status_code=201)
    def new_chat(request: Request, task_id: int):
        return {"session_id": live_chat.start_session(db, request.state.rater.id, task_id)}

    @app.get("/api/chats/{session_id}")
    def chat(request: Request, session_id: int):
        return live_chat.session_view(db, request.state.rater.id, session_id)

    @app.post("/api/chats/{session_id}/messages")
    async def send(request: Request, session_id: int):
        """The reply streams back as JSON lines: ``{"delta": ...}`` then ``{"done": true, ...}``."""
        body = await json_body(request, ("content",))
        events = await run_in_threadpool(
            live_chat.post_message, db, app.state.chat_models, request.state.rater.id, session_id, body.get("content")
        )
        lines = (json.dumps(event, ensure_ascii=False) + "\n" for event in events)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    @app.post("/api/chat-messages/{message_id}/vote")
    async def vote(request: Request, message_id: int):
        body = await json_body(request, ("vote", "comment"))
        await run_in_threadpool(live_chat.vote, db, request.state.rater.id, message_id, body.get("vote"),
                                body.get("comment"))
        return JSONResponse({"message_id": message_id, "vote": body.get("vote")})
