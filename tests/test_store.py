"""The feedback store: its rules, its refusals (which must change nothing) and concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import datetime, timedelta

import pytest
from conftest import postgres_schema
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Ranking
from rlhfkit.feedback.store import (
    IMPORT_CHUNK, BusyError, ConflictError, FeedbackStore, ImportCounts, NotFoundError, Progress, StoreError,
)  # fmt: skip

T0 = datetime(2025, 1, 1, 12, 0, 0)
ABC = [("a", "text a"), ("b", "text b"), ("c", "text c")]
FIRST = 1  # the id of ann's ranking in the `ranked` fixture


@pytest.fixture
def store(store_url):
    with FeedbackStore(store_url) as s:
        yield s


@pytest.fixture
def ranked(store):
    """Two labelers, a guideline, tasks p1 and p2 (completions a, b, c), and ann's ranking of p1."""
    store.add_labeler("ann", "human")
    store.add_labeler("bob", "simulated", meta={"noise": 0.1})
    store.add_guideline("rank by helpfulness")
    store.add_tasks([("p1", "prompt one", ABC), ("p2", "prompt two", ABC)], criterion="helpful", overlap=2)
    first = store.submit_ranking("ann", 1, {"a": 1, "b": 2, "c": "F"}, ["c", "a", "b"], fail_reasons={"c": "empty"})
    assert first == FIRST
    return store


# ---- opening ------------------------------------------------------------------------------------


def test_open_creates_folder_and_sets_sqlite_pragmas(tmp_path):
    path = tmp_path / "run" / "sub" / "feedback.db"
    with FeedbackStore(path) as store:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    assert path.exists()
    with FeedbackStore(f"sqlite:///{path}") as again:  # a URL to the same file reopens it
        assert again.row_counts()["meta"] == 1


def test_a_plain_postgresql_url_uses_psycopg_3(postgres_url):
    with postgres_schema(postgres_url) as url:
        assert url.startswith("postgresql+psycopg://")
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)  # as a user would write it
        with FeedbackStore(plain, busy_timeout_s=2.5) as store:
            assert store.engine.dialect.driver == "psycopg"
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "2500ms"
            assert store.row_counts()["meta"] == 1


def test_writes_take_turns_reads_do_not(store):
    """SQLite: writes BEGIN IMMEDIATE; PostgreSQL: writes take the schema's advisory lock."""
    turn = "BEGIN IMMEDIATE" if store.engine.dialect.name == "sqlite" else "pg_advisory_xact_lock"
    seen = []
    event.listen(store.engine, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))
    store.add_labeler("ann", "human")
    assert any(turn in stmt for stmt in seen)
    seen.clear()
    store.list_labelers()
    assert seen and not any(turn in stmt for stmt in seen)


def test_a_writer_kept_waiting_gets_busy_error_and_writes_nothing(store_url):
    """Issue 16 #4: a write that cannot get its turn in time is refused as busy (the app's 503), not an
    OperationalError (a 500)."""
    with FeedbackStore(store_url) as holder, FeedbackStore(store_url, busy_timeout_s=0.2) as store:
        with holder._write() as other:  # another writer's transaction, open
            other.execute(text("SELECT 1"))  # (SQLite begins it at its first statement)
            with pytest.raises(BusyError, match="busy"):
                store.add_labeler("ann", "human")
        assert store.list_labelers() == []
        store.add_labeler("ann", "human")  # its turn has come


def test_refuses_a_database_of_another_schema_version(tmp_path):
    path = tmp_path / "feedback.db"
    FeedbackStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        FeedbackStore(path)


def test_upgrades_a_version_2_database_keeping_its_rankings(tmp_path):
    path = tmp_path / "feedback.db"
    with FeedbackStore(path) as s:
        s.add_labeler("ann", "human")
        s.add_tasks([("p1", "one", ABC)], "helpful", 1)
        s.submit_ranking("ann", 1, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"])
    with sqlite3.connect(path) as conn:  # back to version 2: no sign-in tables, a token column on labeler
        conn.executescript("DROP TABLE invite; DROP TABLE web_session; ALTER TABLE labeler ADD COLUMN token_hash TEXT;"
                           "UPDATE labeler SET token_hash = 'old'; UPDATE meta SET value = '2';")
    with FeedbackStore(path) as s:
        assert s.row_counts()["ranking"] == 1 and s.row_counts()["invite"] == 0
        s.add_invite("ann", "h", ttl_s=60)
        assert s.invited("h").name == "ann" and s.invited("old") is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == ("3",)


# ---- labelers and guidelines --------------------------------------------------------------------


def test_labelers(store):
    store.add_labeler("ann", "human")
    store.add_labeler("claude", "ai", role="admin", meta={"model": "m", "principle": "harmless"})
    assert store.get_labeler("claude").meta == {"model": "m", "principle": "harmless"}
    assert [(l.name, l.kind, l.role) for l in store.list_labelers()] == [
        ("ann", "human", "labeler"),
        ("claude", "ai", "admin"),
    ]
    with pytest.raises(NotFoundError, match="'zed'"):
        store.get_labeler("zed")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(name="ann", kind="human"), ConflictError, "already exists"),
        (dict(name="new", kind="robot"), StoreError, "kind 'robot'"),
        (dict(name="new", kind="human", role="boss"), StoreError, "role 'boss'"),
        (dict(name=" ", kind="human"), StoreError, "empty"),
        (dict(name="x" * 201, kind="human"), StoreError, "201 characters"),
        (dict(name="a\x00b", kind="human"), StoreError, "NUL"),
    ],
)
def test_add_labeler_refusals_change_nothing(store, kwargs, error, message):
    store.add_labeler("ann", "human")
    before = store.row_counts()
    with pytest.raises(error, match=message):
        store.add_labeler(**kwargs)
    assert store.row_counts() == before


# ---- sign-in: invites and sessions --------------------------------------------------------------


def test_an_invite_is_a_one_time_exchange_for_a_session(store):
    """Issue 16 #2: the link works once; the session it gives expires and can be ended."""
    store.add_labeler("ann", "human")
    expires = store.add_invite("ann", "inv1", ttl_s=3600, now=T0)
    assert expires == T0 + timedelta(hours=1)
    assert store.invited("inv1", now=T0).name == "ann" and store.invited("nope", now=T0) is None
    assert store.redeem_invite("inv1", "sess1", ttl_s=60, now=T0).name == "ann"
    assert store.invited("inv1", now=T0) is None  # used up
    with pytest.raises(NotFoundError, match="not valid"):
        store.redeem_invite("inv1", "sess2", ttl_s=60, now=T0)
    assert store.session_labeler("sess1", now=T0 + timedelta(seconds=59)).name == "ann"
    assert store.session_labeler("sess1", now=T0 + timedelta(seconds=60)) is None  # expired
    store.end_session("sess1", now=T0)
    assert store.session_labeler("sess1", now=T0) is None
    assert store.session_labeler("sess2", now=T0) is None  # the refused exchange made none


def test_an_invite_expires_and_a_reissue_replaces_it(store):
    store.add_labeler("ann", "human")
    store.add_invite("ann", "inv1", ttl_s=60, now=T0)
    assert store.invited("inv1", now=T0 + timedelta(seconds=60)) is None
    store.add_invite("ann", "inv2", ttl_s=60, now=T0)
    assert store.invited("inv1", now=T0) is None and store.invited("inv2", now=T0).name == "ann"
    with pytest.raises(NotFoundError):
        store.add_invite("zed", "inv3", ttl_s=60)


def test_revoke_ends_every_session_and_cancels_unused_links(store):
    store.add_labeler("ann", "human")
    store.add_labeler("bob", "human")
    for i in range(2):
        store.add_invite("ann", f"inv{i}", ttl_s=60, now=T0)
        store.redeem_invite(f"inv{i}", f"sess{i}", ttl_s=60, now=T0)
    store.add_invite("ann", "unused", ttl_s=60, now=T0)
    store.add_invite("bob", "bob-inv", ttl_s=60, now=T0)
    store.redeem_invite("bob-inv", "bob-sess", ttl_s=60, now=T0)
    assert store.revoke("ann", now=T0) == (2, 1)
    assert [store.session_labeler(f"sess{i}", now=T0) for i in range(2)] == [None, None]
    assert store.invited("unused", now=T0) is None
    assert store.session_labeler("bob-sess", now=T0).name == "bob"  # others untouched
    assert store.revoke("ann", now=T0) == (0, 0)


def test_guidelines_count_up_and_confirmations_are_idempotent(store):
    store.add_labeler("ann", "human")
    assert store.latest_guideline() is None
    assert store.add_guideline("v1 text") == 1
    assert store.add_guideline("v2 text") == 2
    assert (store.latest_guideline().version, store.latest_guideline().text) == (2, "v2 text")
    assert not store.has_confirmed("ann", 2)
    store.confirm_guideline("ann", 2)
    store.confirm_guideline("ann", 2)
    assert store.has_confirmed("ann", 2) and not store.has_confirmed("ann", 1)
    assert store.row_counts()["guideline_confirmation"] == 1
    with pytest.raises(NotFoundError, match="guideline version 3"):
        store.confirm_guideline("ann", 3)


# ---- tasks --------------------------------------------------------------------------------------


def test_add_tasks_is_idempotent_on_prompt_id(store):
    first = store.add_tasks([("p1", "one", ABC), ("p2", "two", ABC[:2])], criterion="helpful", overlap=3)
    assert (first.added, first.existing) == (2, 0)
    again = store.add_tasks([("p2", "two", ABC[:2]), ("p3", "three", ABC)], criterion="helpful", overlap=3)
    assert (again.added, again.existing) == (1, 1)
    assert store.row_counts()["task"] == 3 and store.row_counts()["task_completion"] == 3 + 2 + 3
    task = store.get_task(2)
    assert (task.prompt_id, task.prompt, task.overlap, task.completions) == ("p2", "two", 3, tuple(ABC[:2]))


def test_gold_tasks(store):
    store.add_tasks([("p1", "one", ABC), ("g1", "gold", ABC)], "helpful", 1, gold={"g1": {"a": 1, "b": 1, "c": "F"}})
    assert store.gold_answers() == {"g1": {"a": 1, "b": 1, "c": "F"}}
    assert [store.get_task(i).is_gold for i in (1, 2)] == [False, True]


@pytest.mark.parametrize(
    "items, kwargs, error, message",
    [
        ([("p1", "one", ABC[:2]), ("new", "x", ABC)], {}, ConflictError, "'p1' is already stored"),
        ([("p1", "changed", ABC), ("new", "x", ABC)], {}, ConflictError, "'p1' is already stored"),
        ([("new", "x", ABC[:1])], {}, StoreError, "has 1 completions; a task needs 2 to 100"),
        ([("new", "x", [("a", "1"), ("a", "2")])], {}, StoreError, "duplicate completion ids"),
        ([("new", "x", ABC), ("new", "y", ABC)], {}, StoreError, "appears twice"),
        ([("new", "x", ABC)], {"overlap": 0}, StoreError, "overlap"),
        ([("new", "x", ABC)], {"criterion": " "}, StoreError, "criterion is empty"),
        ([("new", "x", [("a", "t"), ("b", None)])], {}, StoreError, "must be text"),
        # issue 16 #5: nothing the API could never take a ranking of (ids ≤ 200 characters, K ≤ 100)
        ([("new", "x", [("c" * 250, "t"), ("b", "t")])], {}, StoreError, "250 characters; at most 200"),
        ([("new", "x", [(f"c{i}", "t") for i in range(101)])], {}, StoreError, "has 101 completions"),
        ([("p" * 201, "x", ABC)], {}, StoreError, "prompt id has 201 characters"),
        # issue 16 #7 and #12: text no database could store as it is
        ([("new", "x", [("a", "t\ud800"), ("b", "t")])], {}, StoreError, "lone surrogate"),
        ([("new", "x\x00y", ABC)], {}, StoreError, "the prompt contains a NUL character"),
        ([("new\x00", "x", ABC)], {}, StoreError, "NUL"),
        ([("new", "x", ABC)], {"gold": {"other": {}}}, StoreError, "not in this import"),
        ([("new", "x", ABC)], {"gold": {"new": {"a": 1, "b": 2}}}, StoreError, r"not marked: \['c'\]"),
    ],
)
def test_add_tasks_refusals_change_nothing(store, items, kwargs, error, message):
    store.add_tasks([("p1", "one", ABC)], "helpful", 1)
    before = store.row_counts()
    with pytest.raises(error, match=message):
        store.add_tasks(items, **{"criterion": "helpful", "overlap": 1, **kwargs})
    assert store.row_counts() == before


def test_the_largest_task_allowed_is_stored_and_ranked(store):
    ids = [f"{i:03d}" + "c" * 197 for i in range(100)]  # 100 completions, ids of exactly 200 characters
    store.add_labeler("ann", "human")
    store.add_tasks([("p" * 200, "x", [(c, "t") for c in ids])], "helpful", 1)
    store.submit_ranking("ann", 1, {c: i + 1 for i, c in enumerate(ids)}, ids)
    assert store.history("ann")[0].marks[ids[-1]] == 100


def test_a_large_import_is_written_in_bounded_transactions(store):
    """Issue 16 #4: 40,000 tasks in one transaction held the write lock for 51 s. Now every transaction
    holds IMPORT_CHUNK tasks at most, and a refused import still writes nothing."""
    n = 2 * IMPORT_CHUNK + 1
    items = [(f"p{i}", f"prompt {i}", ABC) for i in range(n)]
    commits = []
    event.listen(store.engine, "commit", lambda conn: commits.append(1))
    assert store.add_tasks(items, "helpful", 1) == ImportCounts(added=n, existing=0)
    assert len(commits) == 3  # ⌈401 / 200⌉
    assert store.row_counts()["task"] == n and store.row_counts()["task_completion"] == 3 * n
    commits.clear()
    bad = [(f"q{i}", "q", ABC) for i in range(n)] + [("p0", "changed", ABC)]
    with pytest.raises(ConflictError, match="'p0' is already stored"):
        store.add_tasks(bad, "helpful", 1)
    assert commits == [] and store.row_counts()["task"] == n


# ---- assignments --------------------------------------------------------------------------------


def test_assign_fills_the_oldest_task_up_to_its_overlap(store):
    for name in ("ann", "bob", "cat"):
        store.add_labeler(name, "human")
    store.add_tasks([("p1", "one", ABC), ("p2", "two", ABC)], "helpful", overlap=2)
    # ann and bob hold p1's two places, so cat gets p2; ann asking again gets her open assignment back.
    got = [store.assign(n, now=T0).task.prompt_id for n in ("ann", "bob", "cat", "ann")]
    assert got == ["p1", "p1", "p2", "p1"]
    assert store.row_counts()["assignment"] == 3


def test_assign_skips_what_the_labeler_ranked_and_ends_with_none(store):
    store.add_labeler("ann", "human")
    store.add_tasks([("p1", "one", ABC), ("p2", "two", ABC)], "helpful", overlap=3)
    store.submit_ranking("ann", 1, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"])  # without an assignment
    a = store.assign("ann", now=T0)
    assert a.task.prompt_id == "p2" and a.expires_at == T0 + timedelta(seconds=1800)
    store.submit_ranking("ann", a.task.task_id, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"])
    assert store.assign("ann", now=T0) is None


def test_an_expired_assignment_returns_to_the_pool(store):
    for name in ("ann", "bob", "cat"):
        store.add_labeler(name, "human")
    store.add_tasks([("p1", "one", ABC), ("p2", "two", ABC)], "helpful", overlap=1)
    assert store.assign("ann", now=T0, ttl_s=60).task.prompt_id == "p1"
    assert store.assign("bob", now=T0 + timedelta(seconds=10), ttl_s=60).task.prompt_id == "p2"
    assert store.assign("cat", now=T0 + timedelta(seconds=59), ttl_s=60) is None  # both held
    assert store.assign("cat", now=T0 + timedelta(seconds=60), ttl_s=60).task.prompt_id == "p1"  # ann's expired
    assert store.assign("ann", now=T0 + timedelta(seconds=61), ttl_s=60) is None  # p1: cat, p2: bob


def test_a_labelers_own_expired_assignment_is_reopened_not_duplicated(store):
    store.add_labeler("ann", "human")
    store.add_tasks([("p1", "one", ABC)], "helpful", overlap=1)
    store.assign("ann", now=T0, ttl_s=60)
    again = store.assign("ann", now=T0 + timedelta(hours=1), ttl_s=60)
    assert again.task.prompt_id == "p1" and again.expires_at == T0 + timedelta(hours=1, seconds=60)
    assert store.row_counts()["assignment"] == 1


def test_a_skipped_task_goes_back_to_the_pool_but_not_to_the_one_who_skipped(store):
    for name in ("ann", "bob"):
        store.add_labeler(name, "human")
    store.add_tasks([("p1", "one", ABC), ("p2", "two", ABC)], "helpful", overlap=1)
    assert store.assign("ann", now=T0).task.prompt_id == "p1"
    with pytest.raises(ConflictError, match="not held"):
        store.skip("ann", 2)
    store.skip("ann", 1)
    with pytest.raises(ConflictError, match="not held"):
        store.skip("ann", 1)  # skipped already
    assert store.assign("ann", now=T0).task.prompt_id == "p2"
    assert store.assign("bob", now=T0).task.prompt_id == "p1"  # back in the pool at once


# ---- rankings -----------------------------------------------------------------------------------


def test_rankings_come_back_as_records_and_history(ranked):
    assert ranked.current_rankings() == [
        Ranking(
            ranking_id=str(FIRST),
            prompt_id="p1",
            labeler="ann",
            marks={"a": 1, "b": 2, "c": "F"},
            prompt="prompt one",
            texts=dict(ABC),
        )
    ]
    [h] = ranked.history("ann")
    assert (h.fail_reasons, h.shown_order, h.current, h.supersedes) == ({"c": "empty"}, ["c", "a", "b"], True, None)
    assert ranked.history("bob") == [] and ranked.current_rankings("bob") == []


def test_a_correction_supersedes_and_keeps_the_old_row(ranked):
    correction = dict(guideline_version=1, seconds_spent=12.5, comment="misread b", checked_facts=True)
    marks = [("a", 2), ("b", 1), ("c", 2)]
    second = ranked.submit_ranking("ann", 1, marks, ["a", "b", "c"], supersedes=FIRST, **correction)
    [current] = ranked.current_rankings()
    assert (current.ranking_id, current.marks) == (str(second), {"a": 2, "b": 1, "c": 2})
    new, old = ranked.history("ann")
    assert (new.ranking_id, new.supersedes, new.current) == (second, FIRST, True)
    assert (new.guideline_version, new.seconds_spent, new.comment, new.checked_facts) == (1, 12.5, "misread b", True)
    assert (old.ranking_id, old.current, old.marks) == (FIRST, False, {"a": 1, "b": 2, "c": "F"})
    assert ranked.row_counts()["ranking"] == 2


def test_progress_counts_distinct_labelers_up_to_overlap(ranked):
    ranked.add_labeler("cat", "human")
    assert ranked.progress() == Progress(tasks=2, rankings_needed=4, rankings_done=1, tasks_complete=0)
    ranked.submit_ranking("ann", 1, {"a": 1, "b": 1, "c": 1}, ["a", "b", "c"], supersedes=FIRST)
    assert ranked.progress().rankings_done == 1  # a correction is not another labeler
    ranked.submit_ranking("bob", 1, {"a": 1, "b": 1, "c": 1}, ["a", "b", "c"])
    ranked.submit_ranking("cat", 1, {"a": 1, "b": 1, "c": 1}, ["a", "b", "c"])  # beyond p1's overlap of 2
    assert ranked.progress() == Progress(tasks=2, rankings_needed=4, rankings_done=2, tasks_complete=1)


def test_submitting_marks_the_assignment_done(ranked):
    a = ranked.assign("bob", now=T0)
    ranked.submit_ranking("bob", a.task.task_id, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"])
    assert ranked.assign("bob", now=T0).task.prompt_id == "p2"


GOOD = dict(labeler="bob", task_id=1, marks={"a": 1, "b": 2, "c": "F"}, shown_order=["a", "b", "c"])


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"marks": {"a": 1, "b": 2, "c": 3, "zz": 1}}, StoreError, "unknown completion 'zz'"),
        ({"marks": {"a": 1, "b": 2}}, StoreError, r"not marked: \['c'\]"),
        ({"marks": [("a", 1), ("b", 2), ("a", 3), ("c", 1)]}, StoreError, "'a' is marked twice"),
        ({"marks": [("a", 1), ("b",), ("c", 1)]}, StoreError, "pairs"),
        ({"marks": {"a": 0, "b": 2, "c": 3}}, StoreError, "mark 0; want a rank 1..3"),
        ({"marks": {"a": 4, "b": 2, "c": 3}}, StoreError, "mark 4"),
        ({"marks": {"a": True, "b": 2, "c": 3}}, StoreError, "mark True"),
        ({"marks": {"a": "f", "b": 2, "c": 3}}, StoreError, "mark 'f'"),
        ({"marks": {"a": 1.0, "b": 2, "c": 3}}, StoreError, "mark 1.0"),
        ({"task_id": 99}, NotFoundError, "unknown task 99"),
        ({"labeler": "zed"}, NotFoundError, "unknown labeler 'zed'"),
        ({"labeler": "ann"}, ConflictError, "already ranked task 1"),
        ({"shown_order": ["a", "b"]}, StoreError, "shown_order"),
        ({"shown_order": ["a", "b", "b"]}, StoreError, "shown_order"),
        ({"shown_order": ["a", "b", "c", "d"]}, StoreError, "shown_order"),
        ({"fail_reasons": {"a": "bad"}}, StoreError, "'a' is not marked 'F'"),
        ({"fail_reasons": {"c": " "}}, StoreError, "non-empty reason"),
        ({"guideline_version": 7}, NotFoundError, "guideline version 7"),
        ({"seconds_spent": -1}, StoreError, "seconds_spent"),
        ({"seconds_spent": float("nan")}, StoreError, "seconds_spent"),
        ({"supersedes": 999}, NotFoundError, "unknown ranking 999"),
        ({"supersedes": 1}, StoreError, "not a ranking of task 1 by 'bob'"),  # ann's ranking
        ({"labeler": "ann", "task_id": 2, "supersedes": 1}, StoreError, "not a ranking of task 2 by 'ann'"),
    ],
)
def test_refused_rankings_change_nothing(ranked, change, error, message):
    before = ranked.row_counts()
    with pytest.raises(error, match=message):
        ranked.submit_ranking(**{**GOOD, **change})
    assert ranked.row_counts() == before
    assert issubclass(error, RlhfkitError)


def test_a_stale_correction_is_refused_and_changes_nothing(ranked):
    second = ranked.submit_ranking("ann", 1, {"a": 1, "b": 1, "c": 1}, ["a", "b", "c"], supersedes=FIRST)
    before = ranked.row_counts()
    with pytest.raises(ConflictError, match=f"current version is {second}"):
        ranked.submit_ranking("ann", 1, {"a": 2, "b": 1, "c": 1}, ["a", "b", "c"], supersedes=FIRST)
    assert ranked.row_counts() == before


def test_the_database_itself_refuses_a_second_chain(ranked):
    """Even a write that bypasses the store's checks cannot give one labeler two current rankings."""
    insert = text(
        "INSERT INTO ranking (task_id, labeler_id, marks, shown_order, checked_facts, created_at)"
        " VALUES (1, 1, '{}', '[]', false, '2025-01-01')"
    )
    with ranked.engine.begin() as conn, pytest.raises(IntegrityError):
        conn.execute(insert)


# ---- submissions of a held task (the web app's) ---------------------------------------------------


def test_a_held_submission_measures_the_time_from_the_assignment(ranked):
    a = ranked.assign("bob", now=T0, ttl_s=60)
    rid = ranked.submit_ranking("bob", a.task.task_id, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"],
                                held_at=T0 + timedelta(seconds=42))
    assert ranked.get_ranking(rid).seconds_spent == 42.0


def test_a_submission_after_the_hold_expired_is_refused(ranked):
    """Issue 16 #8: it was accepted with seconds_spent 0.0 (the task handed back with a fresh start)."""
    a = ranked.assign("bob", now=T0, ttl_s=60)
    before = ranked.row_counts()
    for at in (T0 + timedelta(seconds=60), T0 + timedelta(hours=1)):
        with pytest.raises(ConflictError, match="not held by 'bob'"):
            ranked.submit_ranking("bob", a.task.task_id, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"], held_at=at)
    with pytest.raises(ConflictError, match="not held"):  # never assigned
        ranked.submit_ranking("bob", 2, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"], held_at=T0)
    assert ranked.row_counts() == before


def test_get_ranking_says_whether_it_is_current(ranked):
    second = ranked.submit_ranking("ann", 1, {"a": 1, "b": 1, "c": 1}, ["a", "b", "c"], supersedes=FIRST)
    old, new = ranked.get_ranking(FIRST), ranked.get_ranking(second)
    assert (old.current, new.current, new.supersedes, new.labeler, new.shown_order) == (False, True, FIRST, "ann",
                                                                                          ["a", "b", "c"])
    with pytest.raises(NotFoundError, match="unknown ranking 99"):
        ranked.get_ranking(99)


# ---- concurrent writers -------------------------------------------------------------------------

N_TASKS = 15
K = 4


def _expected_marks(labeler: str, prompt_id: str) -> dict:
    """A different, checkable ranking per (labeler, task)."""
    shift = sum(map(ord, labeler + prompt_id))
    return {f"c{i}": (i + shift) % K + 1 for i in range(K)}


def _labeling_worker(path: str, fresh_path: str, labeler: str, go) -> None:  # in a fresh process
    go.wait()
    with FeedbackStore(fresh_path) as fresh:  # all workers create the same new database at once
        fresh.add_labeler(labeler, "simulated")
    with FeedbackStore(path) as store:
        while (a := store.assign(labeler)) is not None:
            marks = _expected_marks(labeler, a.task.prompt_id)
            store.submit_ranking(labeler, a.task.task_id, marks, [c for c, _ in a.task.completions], seconds_spent=0.0)


def test_concurrent_writer_processes_lose_nothing(store_url, fresh_store_url):
    path, fresh_path = store_url, fresh_store_url
    names = ["w0", "w1", "w2", "w3"]
    with FeedbackStore(path) as store:
        for name in names:
            store.add_labeler(name, "simulated")
        tasks = [(f"p{i}", f"prompt {i}", [(f"c{j}", f"text {i}.{j}") for j in range(K)]) for i in range(N_TASKS)]
        store.add_tasks(tasks, "helpful", overlap=len(names))
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_labeling_worker, args=(path, fresh_path, n, go)) for n in names]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * len(names)  # a "database is locked" would exit 1

    with FeedbackStore(path) as store:
        got = {(r.labeler, r.prompt_id): r.marks for r in store.current_rankings()}
        assert got == {(n, pid): _expected_marks(n, pid) for n in names for pid, _, _ in tasks}
        assert store.row_counts()["ranking"] == len(names) * N_TASKS
        assert store.progress().tasks_complete == N_TASKS
    with FeedbackStore(fresh_path) as fresh:
        assert sorted(l.name for l in fresh.list_labelers()) == names
