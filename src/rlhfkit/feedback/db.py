"""The feedback database's tables (SQLAlchemy 2 ORM).

Only :mod:`rlhfkit.feedback.store` uses these classes; everything else talks to the store, which
hands out plain dataclasses. Rankings are append-only: a correction is a new row whose
``supersedes`` names the row it replaces, so every judgement a labeler ever gave is kept.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON, Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text,
)  # fmt: skip
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 3
"""Bumped whenever a table changes shape; the store refuses a database of another version.
3: sign-in by one-time invites and server-side sessions (2's permanent labeler tokens are ignored)."""

LABELER_KINDS = ("human", "simulated", "ai")
ROLES = ("labeler", "admin")
ASSIGNMENT_STATUSES = ("open", "done", "expired", "skipped")
INVITE_STATUSES = ("open", "used", "replaced", "revoked")


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=f"ck_{column}")


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the database itself (``schema_version``)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Labeler(Base):
    """A person, a simulated labeler or an AI labeler. ``meta``: e.g. model/principle or noise level."""

    __tablename__ = "labeler"
    __table_args__ = (_one_of("kind", LABELER_KINDS), _one_of("role", ROLES))
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16), default="labeler")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    meta: Mapped[dict | None] = mapped_column(JSON)


class Invite(Base):
    """A one-time sign-in link: only sha256 of its token is kept. Used once, it becomes a session."""

    __tablename__ = "invite"
    __table_args__ = (_one_of("status", INVITE_STATUSES),)
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labeler.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")


class WebSession(Base):
    """A signed-in browser or client: only sha256 of the session id (the cookie) is kept."""

    __tablename__ = "web_session"
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labeler.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)  # signed out or revoked


class Guideline(Base):
    """One version of the written labeling guideline; versions count up from 1."""

    __tablename__ = "guideline"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class GuidelineConfirmation(Base):
    """A labeler confirmed having read a guideline version."""

    __tablename__ = "guideline_confirmation"
    __table_args__ = (UniqueConstraint("labeler_id", "guideline_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labeler.id"))
    guideline_version: Mapped[int] = mapped_column(ForeignKey("guideline.version"))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Task(Base):
    """One prompt and its K completions, to be ranked by ``overlap`` different labelers."""

    __tablename__ = "task"
    __table_args__ = (CheckConstraint("overlap >= 1", name="ck_overlap"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[str] = mapped_column(String(200), unique=True)
    prompt: Mapped[str] = mapped_column(Text)
    criterion: Mapped[str] = mapped_column(Text)
    overlap: Mapped[int] = mapped_column(Integer)
    # How many labelers have ranked it; kept by the store in the ranking's transaction so that
    # assignment can skip finished tasks without counting rankings of every older task.
    rankers: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold: Mapped[dict | None] = mapped_column(JSON)  # the expected marks of a gold task


class TaskCompletion(Base):
    """One of a task's completions; ``position`` is the import order (the app may shuffle it)."""

    __tablename__ = "task_completion"
    __table_args__ = (UniqueConstraint("task_id", "completion_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"))
    completion_id: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)


class Assignment(Base):
    """A task handed to a labeler until ``expires_at``; never the same labeler twice on one task."""

    __tablename__ = "assignment"
    __table_args__ = (
        UniqueConstraint("task_id", "labeler_id"),
        _one_of("status", ASSIGNMENT_STATUSES),
        Index("ix_assignment_task_status", "task_id", "status"),
        Index("ix_assignment_labeler_status", "labeler_id", "status"),
        Index("ix_assignment_status_expiry", "status", "expires_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labeler.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")


class Ranking(Base):
    """One labeler's judgement of one task. Never updated: a correction is a new row that supersedes it."""

    __tablename__ = "ranking"
    __table_args__ = (
        Index("ix_ranking_task_labeler", "task_id", "labeler_id"),
        # One chain of corrections per (task, labeler): a single first ranking (supersedes NULL), and
        # each ranking superseded at most once (the unique ``supersedes`` below) — so exactly one is current.
        Index(
            "uq_ranking_first",
            "task_id",
            "labeler_id",
            unique=True,
            sqlite_where=text("supersedes IS NULL"),
            postgresql_where=text("supersedes IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labeler.id"))
    marks: Mapped[dict] = mapped_column(JSON)  # completion_id → rank (1 = best) or "F"
    fail_reasons: Mapped[dict | None] = mapped_column(JSON)  # completion_id → reason, F marks only
    shown_order: Mapped[list] = mapped_column(JSON)  # completion_ids in the order the labeler saw them
    guideline_version: Mapped[int | None] = mapped_column(ForeignKey("guideline.version"))
    seconds_spent: Mapped[float | None]
    comment: Mapped[str | None] = mapped_column(Text)
    checked_facts: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    supersedes: Mapped[int | None] = mapped_column(ForeignKey("ranking.id"), unique=True)
