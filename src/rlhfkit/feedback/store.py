"""The feedback store of record: the one module that reads and writes the feedback database.

Everything else (web app, simulated and AI labelers, export) calls :class:`FeedbackStore` with plain
arguments and gets plain dataclasses or :class:`rlhfkit.data.records.Ranking` back; no ORM object
or session ever leaves this module. What a write may contain is checked by :mod:`.rules`.

Every write runs in one transaction that checks the store's rules first and inserts after, so a
refused write (a :class:`StoreError`) leaves the database exactly as it was.

Writers take turns, one at a time, on both databases: the rules are check-then-insert (a task's
overlap, one current ranking per labeler and task). SQLite (the embedded default) is opened in WAL
mode so readers never wait for writers, and every write transaction starts with ``BEGIN IMMEDIATE``:
concurrent writers queue on the write lock instead of failing with "database is locked" when a
deferred read transaction tries to upgrade to a write (https://www.sqlite.org/lang_transaction.html,
SQLAlchemy docs "sqlite_enabling_transactions"). PostgreSQL (psycopg 3) gets the same with a
transaction-level advisory lock per schema. A writer that waits longer than ``busy_timeout_s`` gets
:class:`BusyError` (the web app answers 503 with Retry-After), never a half-done write.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
import math
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, exists, func, insert, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from rlhfkit.data.records import Mark, Ranking
from rlhfkit.feedback import db
from rlhfkit.feedback.store_types import (  # the plain dataclasses the store hands out
    Assignment, Guideline, ImportCounts, Labeler, Progress, StoredRanking, Task,
)  # fmt: skip
from rlhfkit.feedback.rules import (
    StoreError, check_completion_ids, check_fail_reasons, check_id, check_shown_order, check_text, parse_marks,
)  # fmt: skip

BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another writer's turn before giving up with :class:`BusyError`."""

DEFAULT_TTL_S = 30 * 60
"""How long an assignment holds its task before it returns to the pool."""

IMPORT_CHUNK, IMPORT_PAUSE_S = 200, 0.02
"""Tasks per import transaction, and the pause between two: a large import holds the write lock a
moment at a time, and SQLite's busy handler (which polls) finds it free in between."""

_NEWER = db.Ranking.__table__.alias("newer")  # a later ranking, in "is this one superseded?" subqueries

# PostgreSQL's "wait for the writers' turn": keyed by schema, so stores in other schemas never wait for this one.
_PG_WRITER_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('rlhfkit.feedback:' || coalesce(current_schema(), '')))")
_BUSY_SQLSTATES = {"55P03", "40001", "40P01"}  # lock_not_available, serialization_failure, deadlock_detected


class NotFoundError(StoreError):
    """An unknown labeler, task, guideline version or ranking."""


class ConflictError(StoreError):
    """A write that clashes with what is stored (a duplicate name, a second ranking, a stale correction)."""


class BusyError(StoreError):
    """Other writers held the database longer than the busy timeout; nothing was written: try again."""


def _utc(now: datetime | None) -> datetime:
    """Naive UTC, the one form every timestamp is stored in (SQLite keeps no time zone)."""
    if now is None:
        now = datetime.now(timezone.utc)
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc).replace(tzinfo=None)
    return now


def _sqlite_on_connect(busy_ms: int):
    def on_connect(dbapi_connection, _record) -> None:
        # sqlite3 must not issue its own BEGIN: _sqlite_begin emits it (with IMMEDIATE for writes).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA foreign_keys = ON")  # off by default in SQLite, per connection
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    return on_connect


def _sqlite_begin(connection) -> None:
    mode = connection.get_execution_options().get("rlhfkit_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _postgres_on_connect(busy_ms: int):
    def on_connect(dbapi_connection, _record) -> None:
        # A session setting, so outside any transaction (SQLAlchemy docs, "Setting a Default Schema").
        dbapi_connection.autocommit = True
        dbapi_connection.execute(f"SET lock_timeout = {busy_ms}")
        dbapi_connection.autocommit = False

    return on_connect


def database_url(url_or_path: str | Path) -> URL:
    """The SQLAlchemy URL of a store: a path is a SQLite file; ``postgresql://`` means psycopg 3."""
    text_ = str(url_or_path)
    url = make_url(text_) if "://" in text_ else make_url(f"sqlite:///{Path(text_).expanduser()}")
    if url.drivername == "postgresql":  # SQLAlchemy's default PostgreSQL driver is psycopg2
        url = url.set(drivername="postgresql+psycopg")
    return url


def _open_engine(url_or_path: str | Path, busy_timeout_s: float) -> Engine:
    url = database_url(url_or_path)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    busy_ms = max(1, round(1000 * busy_timeout_s))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect(busy_ms))
        event.listen(engine, "begin", _sqlite_begin)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _postgres_on_connect(busy_ms))
    return engine


def _is_busy(e: OperationalError) -> bool:
    """Did the database refuse for lack of its lock in time (SQLite's busy, PostgreSQL's lock timeout)?"""
    message = str(e.orig).lower()
    return getattr(e.orig, "sqlstate", None) in _BUSY_SQLSTATES or "database is locked" in message


class FeedbackStore:
    """Labelers, guidelines, tasks, assignments and rankings in one SQLite file or PostgreSQL database.

    ``url_or_path``: a file path (SQLite; the folder is created), or a ``sqlite:///…`` or
    ``postgresql://…`` URL. Tables are created on open. Labelers are named by ``name`` everywhere.
    """

    def __init__(self, url_or_path: str | Path, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.engine = _open_engine(url_or_path, busy_timeout_s)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(rlhfkit_begin="IMMEDIATE"), expire_on_commit=False)
        with self._write() as s:
            db.Base.metadata.create_all(s.connection())
            version = s.get(db.Meta, "schema_version")
            if version is None:
                s.add(db.Meta(key="schema_version", value=str(db.SCHEMA_VERSION)))
            elif version.value == "2":  # 3 only added tables (create_all made them); 2's labeler tokens are unused
                version.value = str(db.SCHEMA_VERSION)
            elif version.value != str(db.SCHEMA_VERSION):
                self.engine.dispose()
                raise StoreError(
                    f"{self.engine.url}: feedback database schema version {version.value}; "
                    f"this rlhfkit reads version {db.SCHEMA_VERSION}"
                )

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction, after the writers' turn: commits on success, rolls back on any error."""
        try:
            with self._writer() as session, session.begin():
                if self.engine.dialect.name == "postgresql":
                    session.execute(_PG_WRITER_LOCK)
                yield session
        except IntegrityError as e:  # a write the checks could not see coming (a change made outside the store)
            raise ConflictError(f"refused by the database: {e.orig}") from e
        except OperationalError as e:
            if _is_busy(e):
                raise BusyError("the feedback database is busy with other writes; try again in a moment") from e
            raise

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._reader() as session:
                yield session
        except OperationalError as e:
            if _is_busy(e):
                raise BusyError("the feedback database is busy; try again in a moment") from e
            raise

    # ---- labelers -------------------------------------------------------------------------------

    def add_labeler(self, name: str, kind: str, role: str = "labeler", meta: dict | None = None) -> Labeler:
        """Register a labeler; ``kind`` is human|simulated|ai, ``role`` labeler|admin."""
        check_id(name, "labeler name")
        if kind not in db.LABELER_KINDS:
            raise StoreError(f"labeler kind {kind!r}: want one of {db.LABELER_KINDS}")
        if role not in db.ROLES:
            raise StoreError(f"labeler role {role!r}: want one of {db.ROLES}")
        with self._write() as s:
            if s.scalar(select(db.Labeler.id).where(db.Labeler.name == name)) is not None:
                raise ConflictError(f"labeler {name!r} already exists")
            row = db.Labeler(name=name, kind=kind, role=role, meta=meta or {}, created_at=_utc(None))
            s.add(row)
            s.flush()
            return self._labeler(row)

    def get_labeler(self, name: str) -> Labeler:
        with self._read() as s:
            return self._labeler(self._labeler_row(s, name))

    def list_labelers(self) -> list[Labeler]:
        with self._read() as s:
            return [self._labeler(r) for r in s.scalars(select(db.Labeler).order_by(db.Labeler.id))]

    @staticmethod
    def _labeler(row: db.Labeler) -> Labeler:
        return Labeler(row.id, row.name, row.kind, row.role, dict(row.meta or {}), row.created_at)

    @staticmethod
    def _labeler_row(s: Session, name: str) -> db.Labeler:
        row = s.scalar(select(db.Labeler).where(db.Labeler.name == name))
        if row is None:
            raise NotFoundError(f"unknown labeler {name!r}")
        return row

    # ---- sign-in: one-time invites, sessions (only sha256 of a token or session id is stored) ----

    def add_invite(self, labeler: str, token_hash: str, ttl_s: float, now: datetime | None = None) -> datetime:
        """A one-time sign-in link for ``labeler``, valid ``ttl_s`` seconds; their earlier unused links
        stop working. Returns when it expires (naive UTC)."""
        now = _utc(now)
        with self._write() as s:
            labeler_id = self._labeler_row(s, labeler).id
            s.execute(update(db.Invite).where(db.Invite.labeler_id == labeler_id, db.Invite.status == "open")
                      .values(status="replaced"))  # fmt: skip
            expires = now + timedelta(seconds=ttl_s)
            s.add(db.Invite(labeler_id=labeler_id, token_hash=token_hash, created_at=now, expires_at=expires))
            return expires

    def invited(self, token_hash: str, now: datetime | None = None) -> Labeler | None:
        """Whom an open, unexpired invite is for; None for an unknown, used, replaced or expired one."""
        with self._read() as s:
            invite = self._open_invite(s, token_hash, _utc(now))
            return None if invite is None else self._labeler(s.get(db.Labeler, invite.labeler_id))

    def redeem_invite(self, token_hash: str, session_hash: str, ttl_s: float, now: datetime | None = None) -> Labeler:
        """Exchange an open invite for a session valid ``ttl_s`` seconds; the invite is used up."""
        now = _utc(now)
        with self._write() as s:
            invite = self._open_invite(s, token_hash, now)
            if invite is None:
                raise NotFoundError("this sign-in link is not valid (unknown, used, replaced or expired)")
            invite.status = "used"
            s.add(db.WebSession(labeler_id=invite.labeler_id, token_hash=session_hash, created_at=now,
                                expires_at=now + timedelta(seconds=ttl_s)))
            return self._labeler(s.get(db.Labeler, invite.labeler_id))

    def session_labeler(self, session_hash: str, now: datetime | None = None) -> Labeler | None:
        """Who a session belongs to, while it has neither ended nor expired."""
        ws = db.WebSession
        with self._read() as s:
            row = s.scalar(
                select(db.Labeler).join(ws, ws.labeler_id == db.Labeler.id)
                .where(ws.token_hash == session_hash, ws.ended_at.is_(None), ws.expires_at > _utc(now))
            )  # fmt: skip
            return None if row is None else self._labeler(row)

    def end_session(self, session_hash: str, now: datetime | None = None) -> None:
        """Sign one session out (the row is kept, ended)."""
        with self._write() as s:
            ws = db.WebSession
            s.execute(update(ws).where(ws.token_hash == session_hash, ws.ended_at.is_(None)).values(ended_at=_utc(now)))

    def revoke(self, labeler: str, now: datetime | None = None) -> tuple[int, int]:
        """Sign ``labeler`` out everywhere and cancel their unused links: (sessions ended, links cancelled).
        Their rankings stay; a new link (:meth:`add_invite`) lets them in again."""
        ws, inv = db.WebSession, db.Invite
        with self._write() as s:
            labeler_id = self._labeler_row(s, labeler).id
            ended = s.execute(update(ws).where(ws.labeler_id == labeler_id, ws.ended_at.is_(None))
                              .values(ended_at=_utc(now))).rowcount  # fmt: skip
            cancelled = s.execute(update(inv).where(inv.labeler_id == labeler_id, inv.status == "open")
                                  .values(status="revoked")).rowcount  # fmt: skip
            return ended, cancelled

    @staticmethod
    def _open_invite(s: Session, token_hash: str, now: datetime) -> db.Invite | None:
        inv = db.Invite
        return s.scalar(select(inv).where(inv.token_hash == token_hash, inv.status == "open", inv.expires_at > now))

    # ---- guidelines -----------------------------------------------------------------------------

    def add_guideline(self, text: str) -> int:
        """Store a new guideline version (1, 2, …) and return its number."""
        if not check_text(text, "guideline text").strip():
            raise StoreError("guideline text is empty")
        with self._write() as s:
            version = (s.scalar(select(func.max(db.Guideline.version))) or 0) + 1
            s.add(db.Guideline(version=version, text=text, created_at=_utc(None)))
            return version

    def latest_guideline(self) -> Guideline | None:
        with self._read() as s:
            row = s.scalar(select(db.Guideline).order_by(db.Guideline.version.desc()).limit(1))
            return None if row is None else Guideline(row.version, row.text, row.created_at)

    def confirm_guideline(self, labeler: str, version: int) -> None:
        """Record that ``labeler`` has read guideline ``version`` (confirming twice is fine)."""
        with self._write() as s:
            labeler_id = self._labeler_row(s, labeler).id
            self._require_guideline(s, version)
            done = s.scalar(
                select(db.GuidelineConfirmation.id).where(
                    db.GuidelineConfirmation.labeler_id == labeler_id,
                    db.GuidelineConfirmation.guideline_version == version,
                )
            )
            if done is None:
                s.add(db.GuidelineConfirmation(labeler_id=labeler_id, guideline_version=version, created_at=_utc(None)))

    def has_confirmed(self, labeler: str, version: int) -> bool:
        with self._read() as s:
            labeler_id = self._labeler_row(s, labeler).id
            return s.scalar(
                select(db.GuidelineConfirmation.id).where(
                    db.GuidelineConfirmation.labeler_id == labeler_id,
                    db.GuidelineConfirmation.guideline_version == version,
                )
            ) is not None

    @staticmethod
    def _require_guideline(s: Session, version: int) -> None:
        if s.scalar(select(db.Guideline.id).where(db.Guideline.version == version)) is None:
            raise NotFoundError(f"unknown guideline version {version!r}")

    # ---- tasks ----------------------------------------------------------------------------------

    def add_tasks(
        self,
        items: Iterable[tuple[str, str, Sequence[tuple[str, str]]]],
        criterion: str,
        overlap: int,
        gold: Mapping[str, Mapping[str, Mark]] | None = None,
    ) -> ImportCounts:
        """Import tasks from (prompt_id, prompt, [(completion_id, text), …]); idempotent on prompt_id.

        A prompt_id already stored with the same prompt and completions is counted as ``existing``;
        with different ones it is refused. ``gold`` maps a prompt_id to its expected marks, making that
        task a gold (known-answer) task. Everything is checked before anything is written, so a refused
        import stores nothing; the tasks are then written IMPORT_CHUNK to a transaction, so a large
        import never holds the write lock for long (an import cut short by a crash is simply run again).
        """
        if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 1:
            raise StoreError(f"overlap must be an integer ≥ 1, got {overlap!r}")
        check_text(criterion, "criterion")
        if not criterion.strip():
            raise StoreError("criterion is empty")
        gold = dict(gold or {})
        tasks: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        for prompt_id, prompt, completions in items:
            prompt_id, completions = str(prompt_id), [(str(c), t) for c, t in completions]
            where = f"prompt {prompt_id!r}"
            check_id(prompt_id, "prompt id")
            check_text(prompt, f"{where}: the prompt")
            for cid, text_ in completions:
                check_id(cid, f"{where}: completion id {cid!r}")
                check_text(text_, f"{where}: the text of completion {cid!r}")
            check_completion_ids([c for c, _ in completions], where)
            if prompt_id in tasks and tasks[prompt_id] != (prompt, completions):
                raise StoreError(f"prompt {prompt_id!r} appears twice in this import with different content")
            tasks[prompt_id] = (prompt, completions)
        unknown_gold = sorted(set(gold) - set(tasks))
        if unknown_gold:
            raise StoreError(f"gold answers for prompts not in this import: {unknown_gold}")
        gold = {pid: parse_marks(marks, [c for c, _ in tasks[pid][1]]) for pid, marks in gold.items()}

        with self._read() as s:
            new = self._not_stored(s, tasks)
        added, now = 0, _utc(None)
        for start in range(0, len(new), IMPORT_CHUNK):
            if start:
                time.sleep(IMPORT_PAUSE_S)  # let waiting writers in between two chunks
            with self._write() as s:
                chunk = self._not_stored(s, {pid: tasks[pid] for pid in new[start : start + IMPORT_CHUNK]})
                if not chunk:
                    continue
                # Core bulk inserts, not one ORM flush per task (~20× faster: the lock is held that much less).
                rows = [dict(prompt_id=pid, prompt=tasks[pid][0], criterion=criterion, overlap=overlap, rankers=0,
                             created_at=now, is_gold=pid in gold, gold=gold.get(pid)) for pid in chunk]
                ids = dict(s.execute(insert(db.Task).returning(db.Task.prompt_id, db.Task.id), rows).all())
                s.execute(insert(db.TaskCompletion), [
                    dict(task_id=ids[pid], completion_id=cid, text=text_, position=i)
                    for pid in chunk for i, (cid, text_) in enumerate(tasks[pid][1])
                ])  # fmt: skip
                added += len(chunk)
        return ImportCounts(added, len(tasks) - added)

    def _not_stored(self, s: Session, tasks: dict[str, tuple[str, list[tuple[str, str]]]]) -> list[str]:
        """The prompt ids of ``tasks`` not stored yet; refuses one stored with other content."""
        stored = self._stored_tasks(s, list(tasks))
        for prompt_id, task in stored.items():
            if (task.prompt, list(task.completions)) != tasks[prompt_id]:
                raise ConflictError(f"prompt {prompt_id!r} is already stored with a different prompt or completions")
        return [pid for pid in tasks if pid not in stored]

    def get_task(self, task_id: int) -> Task:
        with self._read() as s:
            row = s.get(db.Task, task_id)
            if row is None:
                raise NotFoundError(f"unknown task {task_id!r}")
            return self._task(row, self._completions(s, [task_id])[task_id])

    def gold_answers(self) -> dict[str, dict[str, Mark]]:
        """prompt_id → expected marks, for every gold task."""
        with self._read() as s:
            rows = s.execute(select(db.Task.prompt_id, db.Task.gold).where(db.Task.is_gold))
            return {prompt_id: dict(gold) for prompt_id, gold in rows}

    @staticmethod
    def _task(row: db.Task, completions: list[tuple[str, str]]) -> Task:
        return Task(row.id, row.prompt_id, row.prompt, row.criterion, row.overlap, tuple(completions), row.is_gold)

    @staticmethod
    def _completions(s: Session, task_ids: list[int]) -> dict[int, list[tuple[str, str]]]:
        """task_id → [(completion_id, text)] in position order."""
        out: dict[int, list[tuple[str, str]]] = {t: [] for t in task_ids}
        tc = db.TaskCompletion
        for chunk in range(0, len(task_ids), 500):  # stays under SQLite's bound-parameter limit
            ids = task_ids[chunk : chunk + 500]
            query = select(tc.task_id, tc.completion_id, tc.text).where(tc.task_id.in_(ids))
            for task_id, cid, text in s.execute(query.order_by(tc.task_id, tc.position)):
                out[task_id].append((cid, text))
        return out

    def _stored_tasks(self, s: Session, prompt_ids: list[str]) -> dict[str, Task]:
        rows: list[db.Task] = []
        for chunk in range(0, len(prompt_ids), 500):
            rows += s.scalars(select(db.Task).where(db.Task.prompt_id.in_(prompt_ids[chunk : chunk + 500])))
        completions = self._completions(s, [r.id for r in rows])
        return {r.prompt_id: self._task(r, completions[r.id]) for r in rows}

    # ---- assignments ----------------------------------------------------------------------------

    def assign(self, labeler: str, now: datetime | None = None, ttl_s: float = DEFAULT_TTL_S) -> Assignment | None:
        """The task ``labeler`` should rank next, held for them for ``ttl_s`` seconds; None when none is left.

        A labeler's open assignment is returned again until it is done or expires. Otherwise the
        oldest task they have not ranked whose rankings plus open assignments fall short of its
        overlap; an expired assignment no longer holds a place.
        """
        now = _utc(now)
        with self._write() as s:
            labeler_id = self._labeler_row(s, labeler).id
            s.execute(
                update(db.Assignment)
                .where(db.Assignment.status == "open", db.Assignment.expires_at <= now)
                .values(status="expired")
            )
            held = s.scalar(
                select(db.Assignment).where(db.Assignment.labeler_id == labeler_id, db.Assignment.status == "open")
            )
            if held is None:
                task_id = s.scalar(self._next_task_query(labeler_id))
                if task_id is None:
                    return None
                held = s.scalar(
                    select(db.Assignment).where(
                        db.Assignment.labeler_id == labeler_id, db.Assignment.task_id == task_id
                    )
                )
                if held is None:  # else: their own expired assignment, opened again (UNIQUE(task, labeler))
                    held = db.Assignment(task_id=task_id, labeler_id=labeler_id)
                    s.add(held)
                held.status, held.created_at, held.expires_at = "open", now, now + timedelta(seconds=ttl_s)
                s.flush()
            task = self._task(s.get(db.Task, held.task_id), self._completions(s, [held.task_id])[held.task_id])
            return Assignment(task, labeler, held.created_at, held.expires_at)

    def skip(self, labeler: str, task_id: int) -> None:
        """Give back the task held for ``labeler`` unranked: it returns to the pool at once, for others only."""
        with self._write() as s:
            labeler_id = self._labeler_row(s, labeler).id
            a = db.Assignment
            held = s.scalar(select(a).where(a.task_id == task_id, a.labeler_id == labeler_id, a.status == "open"))
            if held is None:
                raise ConflictError(f"task {task_id!r} is not held by {labeler!r}; only a held task can be skipped")
            held.status = "skipped"

    @staticmethod
    def _next_task_query(labeler_id: int):
        t, r, a = db.Task, db.Ranking, db.Assignment
        holders = select(func.count(a.id)).where(a.task_id == t.id, a.status == "open").scalar_subquery()
        mine = exists().where(r.task_id == t.id, r.labeler_id == labeler_id)
        skipped = exists().where(a.task_id == t.id, a.labeler_id == labeler_id, a.status == "skipped")
        return (
            select(t.id)
            .where(t.rankers < t.overlap, ~mine, ~skipped, t.rankers + holders < t.overlap)
            .order_by(t.id)
            .limit(1)
        )

    # ---- rankings -------------------------------------------------------------------------------

    def submit_ranking(
        self,
        labeler: str,
        task_id: int,
        marks: Mapping[str, Mark] | Sequence[tuple[str, Mark]],
        shown_order: Sequence[str],
        fail_reasons: Mapping[str, str] | None = None,
        guideline_version: int | None = None,
        seconds_spent: float | None = None,
        comment: str | None = None,
        checked_facts: bool = False,
        supersedes: int | None = None,
        held_at: datetime | None = None,
    ) -> int:
        """Store one ranking and return its id. A labeler's second ranking of a task must name the
        current one in ``supersedes`` (a correction); the old row is kept.

        With ``held_at`` (the web app's submissions) the labeler must hold the task at that moment (an
        open assignment, not expired) and ``seconds_spent`` is measured: from the assignment to ``held_at``.
        """
        if seconds_spent is not None and not (
            isinstance(seconds_spent, (int, float)) and math.isfinite(seconds_spent) and seconds_spent >= 0
        ):
            raise StoreError(f"seconds_spent must be a finite number ≥ 0, got {seconds_spent!r}")
        if comment is not None:
            check_text(comment, "comment")
        with self._write() as s:
            labeler_id = self._labeler_row(s, labeler).id
            if s.get(db.Task, task_id) is None:
                raise NotFoundError(f"unknown task {task_id!r}")
            if held_at is not None:
                seconds_spent = self._seconds_held(s, labeler, labeler_id, task_id, _utc(held_at))
            completion_ids = [cid for cid, _ in self._completions(s, [task_id])[task_id]]
            parsed = parse_marks(marks, completion_ids)
            reasons = check_fail_reasons(fail_reasons, parsed)
            order = check_shown_order(shown_order, completion_ids)
            if guideline_version is not None:
                self._require_guideline(s, guideline_version)
            current = s.scalar(
                self._current_query().where(db.Ranking.task_id == task_id, db.Ranking.labeler_id == labeler_id)
            )
            if supersedes is None and current is not None:
                raise ConflictError(
                    f"labeler {labeler!r} already ranked task {task_id} (ranking {current.id}); "
                    f"to correct it, submit with supersedes={current.id}"
                )
            if supersedes is not None:
                old = s.get(db.Ranking, supersedes)
                if old is None:
                    raise NotFoundError(f"unknown ranking {supersedes!r}")
                if (old.task_id, old.labeler_id) != (task_id, labeler_id):
                    raise StoreError(f"ranking {supersedes} is not a ranking of task {task_id} by {labeler!r}")
                if current is None or current.id != old.id:
                    raise ConflictError(
                        f"ranking {supersedes} was already corrected; its current version is {current.id}"
                    )
            row = db.Ranking(
                task_id=task_id,
                labeler_id=labeler_id,
                marks=parsed,
                fail_reasons=reasons,
                shown_order=order,
                guideline_version=guideline_version,
                seconds_spent=None if seconds_spent is None else float(seconds_spent),
                comment=comment,
                checked_facts=bool(checked_facts),
                created_at=_utc(None),
                supersedes=supersedes,
            )
            s.add(row)
            if supersedes is None:  # this labeler's first ranking of the task
                s.execute(update(db.Task).where(db.Task.id == task_id).values(rankers=db.Task.rankers + 1))
            s.execute(
                update(db.Assignment)
                .where(db.Assignment.task_id == task_id, db.Assignment.labeler_id == labeler_id)
                .values(status="done")
            )
            s.flush()
            return row.id

    @staticmethod
    def _seconds_held(s: Session, labeler: str, labeler_id: int, task_id: int, at: datetime) -> float:
        """Seconds since ``labeler`` was handed ``task_id``, which they must still hold at ``at``."""
        a = db.Assignment
        held = s.scalar(
            select(a).where(a.task_id == task_id, a.labeler_id == labeler_id, a.status == "open", a.expires_at > at)
        )
        if held is None:
            raise ConflictError(f"task {task_id} is not held by {labeler!r} (ranked already, skipped, never "
                                "assigned, or the hold expired); reload to get your current task")  # fmt: skip
        return max(0.0, (at - held.created_at).total_seconds())

    @staticmethod
    def _current_query():
        """Rankings no later row supersedes."""
        return select(db.Ranking).where(~exists().where(_NEWER.c.supersedes == db.Ranking.id))

    def current_rankings(self, labeler: str | None = None) -> list[Ranking]:
        """Every labeler's latest ranking of every task (corrections replace what they supersede), as
        records with the prompt and completion texts filled in; oldest first."""
        with self._read() as s:
            query = self._current_query().order_by(db.Ranking.id)
            if labeler is not None:
                query = query.where(db.Ranking.labeler_id == self._labeler_row(s, labeler).id)
            query = query.add_columns(db.Task.prompt_id, db.Task.prompt, db.Labeler.name).join(db.Task).join(db.Labeler)
            rows = s.execute(query).all()
            completions = self._completions(s, sorted({r.task_id for r, *_ in rows}))
            return [
                Ranking(
                    ranking_id=str(r.id),
                    prompt_id=prompt_id,
                    labeler=name,
                    marks=dict(r.marks),
                    prompt=prompt,
                    texts=dict(completions[r.task_id]),
                )
                for r, prompt_id, prompt, name in rows
            ]

    def history(self, labeler: str | None = None) -> list[StoredRanking]:
        """Every ranking row of ``labeler`` (of everyone when None), newest first, superseded ones included."""
        with self._read() as s:
            query = select(db.Ranking, db.Task.prompt_id, db.Labeler.name).join(db.Task).join(db.Labeler)
            if labeler is not None:
                query = query.where(db.Ranking.labeler_id == self._labeler_row(s, labeler).id)
            superseded = set(s.scalars(select(db.Ranking.supersedes).where(db.Ranking.supersedes.is_not(None))))
            rows = s.execute(query.order_by(db.Ranking.id.desc()))
            return [self._stored(r, prompt_id, name, r.id not in superseded) for r, prompt_id, name in rows]

    def get_ranking(self, ranking_id: int) -> StoredRanking:
        """One ranking row, superseded or not."""
        with self._read() as s:
            query = select(db.Ranking, db.Task.prompt_id, db.Labeler.name).join(db.Task).join(db.Labeler)
            row = s.execute(query.where(db.Ranking.id == ranking_id)).first()
            if row is None:
                raise NotFoundError(f"unknown ranking {ranking_id!r}")
            newer = s.scalar(select(_NEWER.c.id).where(_NEWER.c.supersedes == ranking_id))
            return self._stored(*row, current=newer is None)

    @staticmethod
    def _stored(r: db.Ranking, prompt_id: str, labeler: str, current: bool) -> StoredRanking:
        return StoredRanking(
            r.id, r.task_id, prompt_id, labeler, dict(r.marks), dict(r.fail_reasons or {}), list(r.shown_order),
            r.guideline_version, r.seconds_spent, r.comment, r.checked_facts, r.created_at, r.supersedes, current,
        )  # fmt: skip

    # ---- counts ---------------------------------------------------------------------------------

    def progress(self) -> Progress:
        """How far labeling has got: a task counts as many rankings as labelers ranked it, up to its overlap."""
        with self._read() as s:
            rows = s.execute(select(db.Task.overlap, db.Task.rankers))
            per_task = [(overlap, min(n, overlap)) for overlap, n in rows]
        return Progress(
            tasks=len(per_task),
            rankings_needed=sum(overlap for overlap, _ in per_task),
            rankings_done=sum(done for _, done in per_task),
            tasks_complete=sum(done == overlap for overlap, done in per_task),
        )

    def row_counts(self) -> dict[str, int]:
        """Rows per table (for status lines, and for tests that a refused write changed nothing)."""
        with self._read() as s:
            return {
                table.name: s.scalar(select(func.count()).select_from(table))
                for table in db.Base.metadata.sorted_tables
            }
