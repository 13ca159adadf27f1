"""The feedback database: SQLAlchemy 2 models, the engine and its sessions.

Any SQLAlchemy URL works (``postgresql+psycopg://...``); a plain path is a SQLite file, the
default. SQLite runs in WAL mode (readers never block the writer; a crash loses no committed
transaction) with ``synchronous=FULL`` (a commit is on disk before it returns) and a busy timeout,
so several server processes can share one file. Write transactions on SQLite start with
``BEGIN IMMEDIATE``: the write lock is taken up front, never upgraded halfway through, which
is where SQLite would otherwise fail with "database is locked".

Correctness under concurrency never rests on an in-process lock: the unique constraints below
are the arbiters (an assignment seat, a rater's round of an item, one rating per assignment),
so the same code is right with several server processes and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from datetime import datetime, timezone
from typing import Iterator, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

TASK_KINDS = ("compare", "rate", "chat")
PREFERENCES = ("a", "b", "tie", "both_bad")
DEFAULT_DB = os.path.join("runs", "feedback", "feedback.db")


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no time zone, so every timestamp is UTC by convention."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def hash_token(token: str) -> str:
    """Tokens are random 32-byte secrets, so a plain SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Base(DeclarativeBase):
    pass


class Rater(Base):
    """A person who rates. Only the hash of their token is stored."""

    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Task(Base):
    """A batch of work: pairwise comparisons, 1-5 ratings, or live chat with one model."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    instructions: Mapped[str] = mapped_column(Text, default="")
    raters_per_item: Mapped[int] = mapped_column(Integer, default=1)
    """Distinct raters each item goes to (more than one gives the overlap agreement is measured on)."""
    chat_model: Mapped[Optional[str]] = mapped_column(String(1000), nullable=True)
    """Chat tasks: the model directory the server chats with."""
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    """Chat tasks: sampling settings (temperature, top_p, max_tokens, system)."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    """One thing to judge: a conversation and one reply (rate) or two (compare)."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    prompt: Mapped[list] = mapped_column(JSON)
    """The conversation before the reply: a list of ``{"role", "content"}`` messages."""
    reply_a: Mapped[str] = mapped_column(Text)
    reply_b: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    model_a: Mapped[Optional[str]] = mapped_column(String(1000), nullable=True)
    model_b: Mapped[Optional[str]] = mapped_column(String(1000), nullable=True)
    source: Mapped[str] = mapped_column(String(1000), default="")
    """Where the item came from (``prompts.jsonl:row 3``, ``samples.jsonl step 4 prompt 1``)."""
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    max_raters: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    """Distinct raters this item goes to; ``None`` = every rater (the agreement set)."""
    repeats: Mapped[int] = mapped_column(Integer, default=1)
    """Times one rater sees this item; above 1 only in an agreement set that measures how
    consistent each rater is with themself."""


class Assignment(Base):
    """An item handed to a rater. ``seat`` numbers the item's raters: the unique (item, seat,
    round) caps the raters at ``max_raters`` even when two servers hand out the last seat at
    once, and the unique (item, rater, round) keeps a rater from getting an item twice."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "seat", "round", name="uq_assignment_seat"),
        UniqueConstraint("item_id", "rater_id", "round", name="uq_assignment_rater"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    seat: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer, default=0)
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)
    """Blind order: the rater saw ``reply_b`` as A and ``reply_a`` as B."""
    status: Mapped[str] = mapped_column(String(8), default="open")
    """``open`` until rated, then ``done``."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Rating(Base):
    """A rater's judgement of one assignment; at most one per assignment."""

    __tablename__ = "ratings"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    preference: Mapped[Optional[str]] = mapped_column(String(8), nullable=True)
    """Compare tasks, in the item's terms after undoing the blind order: ``a`` (``reply_a``
    is better), ``b``, ``tie`` or ``both_bad``."""
    score: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    """Rate tasks: 1 (bad) to 5 (excellent)."""
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    """From handing out the assignment to the rating."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Comment(Base):
    """Free text a rater left on a rating or a chat reply."""

    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    rating_id: Mapped[Optional[int]] = mapped_column(ForeignKey("ratings.id"), nullable=True, index=True)
    message_id: Mapped[Optional[int]] = mapped_column(ForeignKey("chat_messages.id"), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ChatSession(Base):
    """One live conversation of a rater with a chat task's model."""

    __tablename__ = "chat_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ChatMessage(Base):
    """A message of a chat session; assistant replies carry the rater's thumbs up/down."""

    __tablename__ = "chat_messages"
    __table_args__ = (UniqueConstraint("session_id", "position", name="uq_chat_position"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("chat_sessions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    vote: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    """+1 (thumbs up), -1 (thumbs down), ``None`` before the rater votes."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def database_url(db: str) -> str:
    """A SQLAlchemy URL for ``db``: a URL is kept, a path becomes a SQLite file URL."""
    if not isinstance(db, str) or not db.strip():
        raise ValueError(f"feedback database must be a path or a SQLAlchemy URL, got {db!r}")
    if "://" in db:
        return db
    return "sqlite:///" + os.path.abspath(os.path.expanduser(db))


class Database:
    """The engine and its sessions. ``read()`` for queries, ``write()`` for changes (committed
    when the block ends without an exception, rolled back otherwise)."""

    def __init__(self, db: str = DEFAULT_DB, *, create: bool = True):
        self.url = database_url(db)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
            if path and path != ":memory:":
                if not create and not os.path.exists(path):
                    raise ValueError(f"feedback database {path} does not exist (rayppo feedback add-rater creates it)")
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self.engine = create_engine(self.url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        self._writer = self.engine.execution_options(rayppo_write=True)
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._writer, expire_on_commit=False)
        if create:
            Base.metadata.create_all(self.engine)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._read_sessions() as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        with self._write_sessions() as session:
            with session.begin():
                yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_connection, _record) -> None:
    # Transactions are begun by the "begin" listener, not by the driver's own guesswork.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection) -> None:
    immediate = connection.get_execution_options().get("rayppo_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# ------------------------------------------------------------------------------ raters


def add_rater(db: Database, name: str) -> str:
    """Create a rater and return their login token (shown once; only its hash is stored)."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValueError(f"rater name must be 1-200 characters, got {name!r}")
    token = secrets.token_urlsafe(24)
    try:
        with db.write() as s:
            s.add(Rater(name=name, token_hash=hash_token(token)))
    except IntegrityError:
        raise ValueError(f"a rater named {name!r} already exists") from None
    return token


def rater_for_token(db: Database, token: Optional[str]) -> Optional[Rater]:
    """The active rater whose token this is, or ``None``."""
    if not token or len(token) > 200:
        return None
    with db.read() as s:
        rater = s.scalar(select(Rater).where(Rater.token_hash == hash_token(token)))
    return rater if rater is not None and rater.active else None
