"""The feedback web app: FastAPI + uvicorn, bound to 127.0.0.1 unless told otherwise.

Every path except the login page needs a rater's token: ``Authorization: Bearer TOKEN`` for
the JSON API (``/api/...``, 401 without it), or the cookie the login page sets for the HTML
pages (a redirect to ``/login`` without it). The cookie is ``HttpOnly`` and ``SameSite=Strict``,
so another site can neither read it nor make a browser send it with a forged form.

The routes are in :mod:`pipeline.feedback.api` and :mod:`pipeline.feedback.pages`; both call
the same functions (:mod:`pipeline.feedback.assign`, :mod:`pipeline.feedback.live_chat`), and
every change is committed before its response is sent.
"""

from __future__ import annotations

import os
from typing import Optional
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse

from pipeline.feedback import api, pages
from pipeline.feedback.assign import FeedbackError
from pipeline.feedback.live_chat import ChatModels
from pipeline.feedback.storage import DEFAULT_DB, Database, rater_for_token
from pipeline.feedback.web import COOKIE, TEMPLATES

PUBLIC_PATHS = ("/login", "/static/style.css")
_SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


def request_token(request: Request) -> Optional[str]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


def error_response(request: Request, status: int, message: str):
    if is_api(request):
        return JSONResponse({"error": message}, status_code=status)
    context = {"status": status, "message": message, "rater": getattr(request.state, "rater", None)}
    return TEMPLATES.TemplateResponse(request, "error.html", context, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(x) for x in error.get("loc", ()) if x not in ("body",))
        parts.append(f"{where}: {error.get('msg', 'invalid')} (got {error.get('input')!r:.60})")
    return "; ".join(parts) or "malformed request"


def create_app(db: Database, chat_models: Optional[ChatModels] = None) -> FastAPI:
    """The app on an open database. ``chat_models`` serves live-chat tasks (vLLM by default)."""
    app = FastAPI(title="rayppo feedback", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db = db
    app.state.chat_models = chat_models or ChatModels()

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        path = request.url.path
        request.state.rater = None
        if path not in PUBLIC_PATHS:
            rater = await run_in_threadpool(rater_for_token, db, request_token(request))
            if rater is None:
                if is_api(request):
                    response = JSONResponse({"error": "a valid rater token is required (Authorization: Bearer TOKEN)"},
                                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
                else:
                    response = RedirectResponse(f"/login?next={quote(path)}", status_code=303)
                response.headers.update(_SECURITY_HEADERS)
                return response
            request.state.rater = rater
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.exception_handler(FeedbackError)
    async def refused(request: Request, exc: FeedbackError):
        return error_response(request, exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError):
        return error_response(request, 422, _validation_message(exc))

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        detail = getattr(exc, "detail", None)
        message = detail if isinstance(detail, str) and detail != "Not Found" else f"nothing at {request.url.path}"
        return error_response(request, 404, message)

    api.register(app)
    pages.register(app)
    return app


def app_from_env() -> FastAPI:
    """The app uvicorn's worker processes build (``rayppo feedback serve --workers N``)."""
    db = Database(os.environ.get("RAYPPO_FEEDBACK_DB", DEFAULT_DB), create=False)
    models = ChatModels(os.environ.get("RAYPPO_FEEDBACK_CHAT_ENGINE", "vllm"),
                        trust_remote_code=os.environ.get("RAYPPO_FEEDBACK_TRUST_REMOTE_CODE") == "1")
    return create_app(db, models)


def serve(db: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, chat_engine: str = "vllm",
          trust_remote_code: bool = False) -> None:
    """Run the app with uvicorn until interrupted. Several worker processes share the database
    safely: nothing here holds state between requests except the loaded chat models."""
    import uvicorn

    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if chat_engine not in ("vllm", "hf"):
        raise ValueError(f"--chat-engine must be vllm or hf, got {chat_engine!r}")
    Database(db).dispose()  # creates the tables once, before workers race to
    os.environ["RAYPPO_FEEDBACK_DB"] = db
    os.environ["RAYPPO_FEEDBACK_CHAT_ENGINE"] = chat_engine
    os.environ["RAYPPO_FEEDBACK_TRUST_REMOTE_CODE"] = "1" if trust_remote_code else "0"
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"feedback: listening on {host}: reachable from the network; put it behind HTTPS, "
              "raters' tokens travel with every request")
    uvicorn.run("pipeline.feedback.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning", access_log=False)
