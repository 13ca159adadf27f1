"""The HTML pages raters use: log in, the task list, compare, rate, live chat.

Server-rendered Jinja2 templates (``templates/``, autoescaped: model replies are shown as
text, never as markup); the only script is the chat page's (``static/chat.js``). A rating form
posts to ``/assignments/{id}``; the rating is committed, then the browser is sent on to the
next item with "saved" shown, so a confirmation always means the rating is stored.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse

from pipeline.feedback import assign
from pipeline.feedback.assign import FeedbackError
from pipeline.feedback.storage import Assignment, rater_for_token
from pipeline.feedback.web import COOKIE, TEMPLATES

STATIC = os.path.join(os.path.dirname(__file__), "static")
_STATIC_FILES = {"style.css": "text/css", "chat.js": "text/javascript"}


def _safe_next(target: str | None) -> str:
    """Only same-site paths: ``next=//evil.example`` would leave the site."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return "/"
    return target


def _render(request: Request, name: str, status: int = 200, **context):
    context.setdefault("rater", request.state.rater)
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)


def register(app: FastAPI) -> None:
    db = app.state.db

    @app.get("/login")
    def login_page(request: Request, next: str = "/"):
        return _render(request, "login.html", next=_safe_next(next), error=None)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        token = str(form.get("token", "")).strip()
        target = _safe_next(str(form.get("next", "/")))
        rater = await run_in_threadpool(rater_for_token, db, token)
        if rater is None:
            return _render(request, "login.html", status=401, next=target, error="That token is not valid.")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            max_age=30 * 24 * 3600)
        return response

    @app.post("/logout")
    def logout():
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/")
    def home(request: Request):
        return _render(request, "home.html", tasks=assign.task_progress(db, request.state.rater.id))

    @app.get("/tasks/{task_id}")
    def task_page(request: Request, task_id: int, saved: int | None = None):
        with db.read() as s:
            task = assign.get_task(s, task_id)
        if task.kind == "chat":
            return _render(request, "chat.html", task=task)
        handout = assign.next_assignment(db, request.state.rater.id, task_id)
        if handout is None:
            return _render(request, "done.html", task=task, saved=saved)
        template = "compare.html" if task.kind == "compare" else "rate.html"
        return _render(request, template, task=task, handout=handout, saved=saved, choices=assign.CHOICES)

    @app.post("/assignments/{assignment_id}")
    async def rate(request: Request, assignment_id: int):
        form = await request.form()
        unknown = sorted(set(form) - {"choice", "score", "comment"})
        if unknown:
            raise FeedbackError(422, f"unknown field {unknown[0]!r}: expected choice, score, comment")
        rater_id = request.state.rater.id
        rating_id = await run_in_threadpool(
            assign.submit_rating, db, rater_id, assignment_id,
            choice=form.get("choice"), score=form.get("score"), comment=form.get("comment"),
        )
        with db.read() as s:
            task_id = s.get(Assignment, assignment_id).task_id
        return RedirectResponse(f"/tasks/{task_id}?saved={rating_id}", status_code=303)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in _STATIC_FILES:
            raise FeedbackError(404, f"no static file {name!r}")
        return FileResponse(os.path.join(STATIC, name), media_type=_STATIC_FILES[name])
