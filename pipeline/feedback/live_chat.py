"""Live chat tasks: a rater talks with a model, every message is stored, replies get a thumb.

The model is served by the engines of :mod:`pipeline.stages.chat` (vLLM, or transformers), loaded in
the server process on first use and shared by its requests. A user message is committed before
the model starts replying, the reply once it is complete; a reply that fails removes its user
message again, so a conversation never holds a question without its answer.
"""

from __future__ import annotations

import threading
from typing import Iterator, Optional

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.data.chat_history import ChatHistory
from pipeline.feedback.assign import FeedbackError, get_task
from pipeline.feedback.storage import ChatMessage, ChatSession, Comment, Database, Task
from rollout_workers.chat_engine import ChatSampling, load_engine

VOTES = {"up": 1, "down": -1}
MAX_MESSAGE_CHARS = 5000


class ChatModels:
    """Chat engines by model path, loaded once per server process."""

    def __init__(self, engine: str = "vllm", trust_remote_code: bool = False):
        self.engine = engine
        self.trust_remote_code = trust_remote_code
        self._engines: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, model: str):
        with self._lock:
            if model not in self._engines:
                self._engines[model] = load_engine(model, self.engine, trust_remote_code=self.trust_remote_code,
                                                   notify=lambda text: print(f"feedback: {text}"))
            return self._engines[model]


def _session(s, rater_id: int, session_id: int) -> ChatSession:
    chat = s.get(ChatSession, session_id)
    if chat is None or chat.rater_id != rater_id:
        raise FeedbackError(404, f"no chat {session_id} for you")
    return chat


def _messages(s, session_id: int) -> list[ChatMessage]:
    return list(s.scalars(select(ChatMessage).where(ChatMessage.session_id == session_id).order_by(ChatMessage.position)))


def start_session(db: Database, rater_id: int, task_id: int) -> int:
    with db.write() as s:
        get_task(s, task_id, ("chat",))
        chat = ChatSession(task_id=task_id, rater_id=rater_id)
        s.add(chat)
        s.flush()
        return chat.id


def session_view(db: Database, rater_id: int, session_id: int) -> dict:
    with db.read() as s:
        chat = _session(s, rater_id, session_id)
        return {
            "session_id": chat.id,
            "task_id": chat.task_id,
            "messages": [{"id": m.id, "role": m.role, "content": m.content, "vote": m.vote}
                         for m in _messages(s, chat.id)],
        }


def _check_content(content) -> str:
    if not isinstance(content, str) or not content.strip():
        raise FeedbackError(422, "field 'content': must be a non-empty string")
    if len(content) > MAX_MESSAGE_CHARS:
        raise FeedbackError(422, f"field 'content': at most {MAX_MESSAGE_CHARS} characters; got {len(content)}")
    return content


def _add_user_message(db: Database, rater_id: int, session_id: int, content: str) -> tuple[int, Task, list[dict]]:
    """Commit the user's message; returns its id, the task and the whole conversation."""
    try:
        with db.write() as s:
            chat = _session(s, rater_id, session_id)
            messages = _messages(s, chat.id)
            if messages and messages[-1].role == "user":
                raise FeedbackError(409, f"chat {session_id}: the previous message is still being answered")
            message = ChatMessage(session_id=chat.id, position=len(messages), role="user", content=content)
            s.add(message)
            s.flush()
            task = s.get(Task, chat.task_id)
            turns = [{"role": m.role, "content": m.content} for m in messages] + [{"role": "user", "content": content}]
            return message.id, task, turns
    except IntegrityError:
        raise FeedbackError(409, f"chat {session_id}: another message is being sent at the same time") from None


def post_message(db: Database, models: ChatModels, rater_id: int, session_id: int, content) -> Iterator[dict]:
    """Store the message, then yield ``{"delta": text}`` events while the model replies and a
    final ``{"done": true, "message_id": id, "content": reply}`` once the reply is stored (or
    ``{"error": ...}``). Refusals (unknown chat, a message while the last is unanswered) raise
    :class:`FeedbackError` before anything is stored or streamed."""
    content = _check_content(content)
    user_id, task, turns = _add_user_message(db, rater_id, session_id, content)
    return _reply(db, models, session_id, user_id, task, turns)


def _reply(db, models, session_id, user_id, task, turns) -> Iterator[dict]:
    settings = dict(task.settings or {})
    sampling = ChatSampling(
        temperature=float(settings.get("temperature", 0.7)), top_p=float(settings.get("top_p", 1.0)),
        max_tokens=int(settings.get("max_tokens", 128)), seed=int(settings.get("seed", 0)),
    )
    parts: list[str] = []
    try:
        engine = models.get(task.chat_model)
        conversation = ChatHistory(settings.get("system") or None)
        conversation.turns = turns
        conversation.fit(lambda m: len(engine.encode(m)), engine.max_context - sampling.max_tokens)
        seed = sampling.seed + session_id * 1000 + len(turns)
        for piece in engine.stream(conversation.messages, sampling, seed):
            parts.append(piece)
            yield {"delta": piece}
        reply = "".join(parts)
        with db.write() as s:
            message = ChatMessage(session_id=session_id, position=len(turns), role="assistant", content=reply)
            s.add(message)
            s.flush()
            message_id = message.id
    except Exception as exc:  # the reply failed: the question goes too, and the client is told
        with db.write() as s:
            s.execute(delete(ChatMessage).where(ChatMessage.id == user_id))
        yield {"error": f"the model could not reply: {exc}"}
        return
    yield {"done": True, "message_id": message_id, "content": reply}


def vote(db: Database, rater_id: int, message_id: int, value, comment: Optional[str] = None) -> None:
    """Thumbs up or down on an assistant reply; one vote per reply (a second one is refused)."""
    if value not in VOTES:
        raise FeedbackError(422, f"field 'vote': must be 'up' or 'down'; got {value!r}")
    if comment is not None and not isinstance(comment, str):
        raise FeedbackError(422, "field 'comment': must be a string")
    with db.write() as s:
        message = s.get(ChatMessage, message_id)
        chat = s.get(ChatSession, message.session_id) if message is not None else None
        if chat is None or chat.rater_id != rater_id:
            raise FeedbackError(404, f"no chat message {message_id} for you")
        if message.role != "assistant":
            raise FeedbackError(422, f"chat message {message_id} is yours, not a reply: only replies get a vote")
        # A conditional update, not read-then-write: of two votes racing, exactly one matches.
        changed = s.execute(
            update(ChatMessage).where(ChatMessage.id == message_id, ChatMessage.vote.is_(None)).values(vote=VOTES[value])
        ).rowcount
        if not changed:
            raise FeedbackError(409, f"chat message {message_id} already has your vote")
        if comment and comment.strip():
            s.add(Comment(rater_id=rater_id, message_id=message.id, text=comment.strip()[:5000]))
