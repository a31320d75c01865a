"""The feedback store of record: the one module that reads and writes the feedback database.

Everything else (web app, simulated and AI labelers, export) calls :class:`FeedbackStore` with plain
arguments and gets plain dataclasses or :class:`rlhfkit.data.records.Ranking` back; no ORM object
or session ever leaves this module.

Every write runs in one transaction that checks the store's rules first and inserts after, so a
refused write (a :class:`StoreError`) leaves the database exactly as it was.

SQLite (the embedded default) is opened in WAL mode so readers never wait for writers, and every
write transaction starts with ``BEGIN IMMEDIATE``: concurrent writers (several labeler processes,
the web app's threads) queue on the write lock for up to ``busy_timeout`` instead of failing with
"database is locked" when a deferred read transaction tries to upgrade to a write
(https://www.sqlite.org/lang_transaction.html, SQLAlchemy docs "sqlite_enabling_transactions").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, create_engine, distinct, event, exists, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import FAIL, Mark, Ranking
from rlhfkit.feedback import db

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another writer's lock before giving up."""

DEFAULT_TTL_S = 30 * 60
"""How long an assignment holds its task before it returns to the pool."""

_NEWER = db.Ranking.__table__.alias("newer")  # a later ranking, in "is this one superseded?" subqueries


class StoreError(RlhfkitError):
    """A write or lookup the store's rules refuse; the database is unchanged."""


class NotFoundError(StoreError):
    """An unknown labeler, task, guideline version or ranking."""


class ConflictError(StoreError):
    """A write that clashes with what is stored (a duplicate name, a second ranking, a stale correction)."""


@dataclass(frozen=True)
class Labeler:
    """A registered labeler (the token hash itself never leaves the store)."""

    id: int
    name: str
    kind: str  # human | simulated | ai
    role: str  # labeler | admin
    meta: dict
    created_at: datetime
    has_token: bool


@dataclass(frozen=True)
class Guideline:
    """One version of the labeling guideline."""

    version: int
    text: str
    created_at: datetime


@dataclass(frozen=True)
class Task:
    """A prompt and its completions, to be ranked."""

    task_id: int
    prompt_id: str
    prompt: str
    criterion: str
    overlap: int  # how many different labelers must rank it
    completions: tuple[tuple[str, str], ...]  # (completion_id, text) in import order
    is_gold: bool


@dataclass(frozen=True)
class Assignment:
    """A task held for one labeler until ``expires_at`` (naive UTC)."""

    task: Task
    labeler: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class StoredRanking:
    """A ranking row with everything the labeler gave; ``current`` is False once a correction supersedes it."""

    ranking_id: int
    task_id: int
    prompt_id: str
    labeler: str
    marks: dict[str, Mark]
    fail_reasons: dict[str, str]
    shown_order: list[str]
    guideline_version: int | None
    seconds_spent: float | None
    comment: str | None
    checked_facts: bool
    created_at: datetime
    supersedes: int | None
    current: bool


@dataclass(frozen=True)
class ImportCounts:
    """What ``add_tasks`` did."""

    added: int
    existing: int  # already in the store with the same prompt and completions


@dataclass(frozen=True)
class Progress:
    """How far labeling has got."""

    tasks: int
    rankings_needed: int  # Σ overlap over tasks
    rankings_done: int  # Σ min(labelers who ranked the task, overlap)
    tasks_complete: int


def _utc(now: datetime | None) -> datetime:
    """Naive UTC, the one form every timestamp is stored in (SQLite keeps no time zone)."""
    if now is None:
        now = datetime.now(timezone.utc)
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc).replace(tzinfo=None)
    return now


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # sqlite3 must not issue its own BEGIN: _sqlite_begin emits it (with IMMEDIATE for writes).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")  # off by default in SQLite, per connection
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


def _sqlite_begin(connection) -> None:
    mode = connection.get_execution_options().get("rlhfkit_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _open_engine(url_or_path: str | Path) -> Engine:
    text = str(url_or_path)
    url = make_url(text) if "://" in text else make_url(f"sqlite:///{Path(text).expanduser()}")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _parse_marks(marks, completion_ids: Sequence[str]) -> dict[str, Mark]:
    """Marks as {completion_id: rank 1..K or "F"} naming exactly ``completion_ids``, in their order.

    Accepts a mapping or a list of (completion_id, mark) pairs; a pair list may not name a completion twice.
    """
    pairs = list(marks.items()) if isinstance(marks, Mapping) else list(marks)
    k = len(completion_ids)
    given: dict[str, Mark] = {}
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise StoreError(f"marks: want (completion_id, mark) pairs, got {pair!r}")
        cid, mark = pair
        if cid in given:
            raise StoreError(f"marks: completion {cid!r} is marked twice")
        if cid not in completion_ids:
            raise StoreError(f"marks: unknown completion {cid!r}; this task has {list(completion_ids)}")
        if mark != FAIL and (not isinstance(mark, int) or isinstance(mark, bool) or not 1 <= mark <= k):
            raise StoreError(f"marks: completion {cid!r} has mark {mark!r}; want a rank 1..{k} or {FAIL!r}")
        given[cid] = mark
    missing = [cid for cid in completion_ids if cid not in given]
    if missing:
        raise StoreError(f"marks: completions not marked: {missing}")
    return {cid: given[cid] for cid in completion_ids}


def _check_fail_reasons(fail_reasons, marks: dict[str, Mark]) -> dict[str, str] | None:
    if fail_reasons is None:
        return None
    if not isinstance(fail_reasons, Mapping):
        raise StoreError("fail_reasons: want a mapping completion_id → reason")
    for cid, reason in fail_reasons.items():
        if marks.get(cid) != FAIL:
            raise StoreError(f"fail_reasons: completion {cid!r} is not marked {FAIL!r}")
        if not isinstance(reason, str) or not reason.strip():
            raise StoreError(f"fail_reasons: completion {cid!r} needs a non-empty reason")
    return dict(fail_reasons)


def _check_shown_order(shown_order, completion_ids: Sequence[str]) -> list[str]:
    order = list(shown_order)
    if len(order) != len(completion_ids) or sorted(order, key=str) != sorted(completion_ids):
        raise StoreError(f"shown_order {order} is not an ordering of this task's completions {list(completion_ids)}")
    return order


class FeedbackStore:
    """Labelers, guidelines, tasks, assignments and rankings in one SQLite file or PostgreSQL database.

    ``url_or_path``: a file path (SQLite; the folder is created), or a ``sqlite:///…`` or
    ``postgresql://…`` URL. Tables are created on open. Labelers are named by ``name`` everywhere.
    """

    def __init__(self, url_or_path: str | Path):
        self.engine = _open_engine(url_or_path)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(rlhfkit_begin="IMMEDIATE"), expire_on_commit=False)
        with self._write() as s:
            db.Base.metadata.create_all(s.connection())
            version = s.get(db.Meta, "schema_version")
            if version is None:
                s.add(db.Meta(key="schema_version", value=str(db.SCHEMA_VERSION)))
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
        """One write transaction: commits on success, rolls back on any error."""
        try:
            with self._writer() as session, session.begin():
                yield session
        except IntegrityError as e:  # a concurrent writer won a race the checks could not see (PostgreSQL)
            raise ConflictError(f"refused by the database: {e.orig}") from e

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    # ---- labelers -------------------------------------------------------------------------------

    def add_labeler(
        self, name: str, kind: str, role: str = "labeler", meta: dict | None = None, token_hash: str | None = None
    ) -> Labeler:
        """Register a labeler; ``kind`` is human|simulated|ai, ``role`` labeler|admin."""
        if not isinstance(name, str) or not name.strip():
            raise StoreError("labeler name is empty")
        if kind not in db.LABELER_KINDS:
            raise StoreError(f"labeler kind {kind!r}: want one of {db.LABELER_KINDS}")
        if role not in db.ROLES:
            raise StoreError(f"labeler role {role!r}: want one of {db.ROLES}")
        with self._write() as s:
            if s.scalar(select(db.Labeler.id).where(db.Labeler.name == name)) is not None:
                raise ConflictError(f"labeler {name!r} already exists")
            if token_hash is not None and s.scalar(select(db.Labeler.id).where(db.Labeler.token_hash == token_hash)):
                raise ConflictError("another labeler already has this token")
            row = db.Labeler(
                name=name, kind=kind, role=role, meta=meta or {}, token_hash=token_hash, created_at=_utc(None)
            )
            s.add(row)
            s.flush()
            return self._labeler(row)

    def get_labeler(self, name: str) -> Labeler:
        with self._read() as s:
            return self._labeler(self._labeler_row(s, name))

    def labeler_by_token_hash(self, token_hash: str) -> Labeler | None:
        with self._read() as s:
            row = s.scalar(select(db.Labeler).where(db.Labeler.token_hash == token_hash))
            return None if row is None else self._labeler(row)

    def list_labelers(self) -> list[Labeler]:
        with self._read() as s:
            return [self._labeler(r) for r in s.scalars(select(db.Labeler).order_by(db.Labeler.id))]

    @staticmethod
    def _labeler(row: db.Labeler) -> Labeler:
        has_token = row.token_hash is not None
        return Labeler(row.id, row.name, row.kind, row.role, dict(row.meta or {}), row.created_at, has_token)

    @staticmethod
    def _labeler_row(s: Session, name: str) -> db.Labeler:
        row = s.scalar(select(db.Labeler).where(db.Labeler.name == name))
        if row is None:
            raise NotFoundError(f"unknown labeler {name!r}")
        return row

    # ---- guidelines -----------------------------------------------------------------------------

    def add_guideline(self, text: str) -> int:
        """Store a new guideline version (1, 2, …) and return its number."""
        if not isinstance(text, str) or not text.strip():
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
        with different ones it is refused (and nothing of this import is stored). ``gold`` maps a
        prompt_id to its expected marks, making that task a gold (known-answer) task.
        """
        if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 1:
            raise StoreError(f"overlap must be an integer ≥ 1, got {overlap!r}")
        if not isinstance(criterion, str) or not criterion.strip():
            raise StoreError("criterion is empty")
        gold = dict(gold or {})
        tasks: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        for prompt_id, prompt, completions in items:
            prompt_id, completions = str(prompt_id), [(str(c), t) for c, t in completions]
            ids = [c for c, _ in completions]
            if not isinstance(prompt, str) or not all(isinstance(t, str) for _, t in completions):
                raise StoreError(f"prompt {prompt_id!r}: the prompt and completions must be text")
            if len(ids) < 2:
                raise StoreError(f"prompt {prompt_id!r}: a task needs at least 2 completions, got {len(ids)}")
            if len(set(ids)) != len(ids):
                raise StoreError(f"prompt {prompt_id!r}: duplicate completion ids {ids}")
            if prompt_id in tasks and tasks[prompt_id] != (prompt, completions):
                raise StoreError(f"prompt {prompt_id!r} appears twice in this import with different content")
            tasks[prompt_id] = (prompt, completions)
        unknown_gold = sorted(set(gold) - set(tasks))
        if unknown_gold:
            raise StoreError(f"gold answers for prompts not in this import: {unknown_gold}")
        gold = {pid: _parse_marks(marks, [c for c, _ in tasks[pid][1]]) for pid, marks in gold.items()}

        now, added, existing = _utc(None), 0, 0
        with self._write() as s:
            stored = self._stored_tasks(s, list(tasks))
            for prompt_id, (prompt, completions) in tasks.items():
                if prompt_id in stored:
                    if (stored[prompt_id].prompt, list(stored[prompt_id].completions)) != (prompt, completions):
                        raise ConflictError(
                            f"prompt {prompt_id!r} is already stored with a different prompt or completions"
                        )
                    existing += 1
                    continue
                row = db.Task(
                    prompt_id=prompt_id, prompt=prompt, criterion=criterion, overlap=overlap, created_at=now,
                    is_gold=prompt_id in gold, gold=gold.get(prompt_id),
                )  # fmt: skip
                s.add(row)
                s.flush()  # row.id
                s.add_all(
                    db.TaskCompletion(task_id=row.id, completion_id=cid, text=text, position=i)
                    for i, (cid, text) in enumerate(completions)
                )
                added += 1
        return ImportCounts(added, existing)

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
    ) -> int:
        """Store one ranking and return its id. A labeler's second ranking of a task must name the
        current one in ``supersedes`` (a correction); the old row is kept."""
        if seconds_spent is not None and not (
            isinstance(seconds_spent, (int, float)) and math.isfinite(seconds_spent) and seconds_spent >= 0
        ):
            raise StoreError(f"seconds_spent must be a finite number ≥ 0, got {seconds_spent!r}")
        if comment is not None and not isinstance(comment, str):
            raise StoreError("comment must be text")
        with self._write() as s:
            labeler_id = self._labeler_row(s, labeler).id
            if s.get(db.Task, task_id) is None:
                raise NotFoundError(f"unknown task {task_id!r}")
            completion_ids = [cid for cid, _ in self._completions(s, [task_id])[task_id]]
            parsed = _parse_marks(marks, completion_ids)
            reasons = _check_fail_reasons(fail_reasons, parsed)
            order = _check_shown_order(shown_order, completion_ids)
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
            return [
                StoredRanking(
                    r.id, r.task_id, prompt_id, name, dict(r.marks), dict(r.fail_reasons or {}), list(r.shown_order),
                    r.guideline_version, r.seconds_spent, r.comment, r.checked_facts, r.created_at, r.supersedes,
                    r.id not in superseded,
                )  # fmt: skip
                for r, prompt_id, name in s.execute(query.order_by(db.Ranking.id.desc()))
            ]

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
