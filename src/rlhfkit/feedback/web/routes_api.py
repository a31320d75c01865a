"""The JSON API: what the ranking screen's script (and any scripted client) calls.

Assignment, submission and corrections live here; the HTML ranking page renders the same :func:`next_task`.
"""

from __future__ import annotations

import random
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from string import ascii_uppercase

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from rlhfkit.data.errors import RecordError, RlhfkitError
from rlhfkit.data.io import parse_json_object
from rlhfkit.feedback.store import BusyError, FeedbackStore, NotFoundError, Task
from rlhfkit.feedback.web.schemas import (
    CompletionOut, CorrectionIn, MeOut, NextTaskOut, ProgressOut, RankingIn, RankingOut, MAX_ROW_ID, SkipIn, TaskOut,
)  # fmt: skip
from rlhfkit.feedback.web.security import Session, admin_session, checked_session, session


async def no_repeated_keys(request: Request) -> None:
    """JSON bodies may not repeat a key: ``{"marks": {"a": 1, "a": 2}}`` would otherwise keep the last
    value silently (Python's json, and so FastAPI, do)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            parse_json_object(await request.body())  # FastAPI has read and cached the body already
        except RecordError as e:
            if "duplicate key" in e.message:
                raise HTTPException(422, e.message) from None  # anything else FastAPI has answered itself


router = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(no_repeated_keys)])

# The hot path's writes (assign, submit) queue here, one thread at a time. SQLite lets one writer in
# and the others wait in its busy handler, which sleeps in growing steps (up to 100 ms) before trying
# again (sqlite3 sqliteDefaultBusyCallback): under 100 concurrent labelers that idling halved the
# throughput and tripled the p99 latency (bench/label_load.py). Other processes still get the busy wait.
WRITES = threading.Lock()


@contextmanager
def writing(request: Request):
    """This process's turn to write; waiting longer than the busy timeout is a 503, as in the store."""
    if not WRITES.acquire(timeout=request.app.state.settings.busy_timeout_s):
        raise BusyError("the labeling app is busy with other writes; try again in a moment")
    try:
        yield request.app.state.store
    finally:
        WRITES.release()


def shown_order(labeler: str, task: Task) -> list[str]:
    """The order this labeler sees the task's completions in: a shuffle seeded by (labeler, task), so
    a reload shows the same order and the order stored with the ranking is the one that was seen
    (position bias is measured from it). The client never gets to say what it showed."""
    ids = [cid for cid, _ in task.completions]
    return random.Random(f"{labeler}\n{task.task_id}").sample(ids, len(ids))


def letter(i: int) -> str:
    """The label of the i-th completion shown: A, B, C, … (the key that picks it)."""
    return ascii_uppercase[i] if i < 26 else str(i + 1)


def unconfirmed_guideline(store: FeedbackStore, labeler: str) -> int | None:
    """The latest guideline version if this labeler has not confirmed it yet."""
    g = store.latest_guideline()
    return g.version if g is not None and not store.has_confirmed(labeler, g.version) else None


def _require_guideline(store: FeedbackStore, labeler: str) -> int | None:
    """The latest guideline version, which this labeler must have confirmed (None: there is no guideline)."""
    g = store.latest_guideline()
    if g is not None and not store.has_confirmed(labeler, g.version):
        raise HTTPException(409, f"read and confirm guideline version {g.version} first (/guideline)")
    return g and g.version


def cards(task: Task, order: list[str]) -> list[CompletionOut]:
    """The task's completions as the ranking screen shows them: in ``order``, lettered."""
    texts = dict(task.completions)
    return [CompletionOut(letter=letter(i), completion_id=c, text=texts[c]) for i, c in enumerate(order)]


def next_task(request: Request, labeler: str) -> TaskOut | None:
    """The task held for this labeler (assigning one if none is held); None when none is left."""
    with writing(request) as store:
        a = store.assign(labeler, ttl_s=request.app.state.settings.assignment_ttl_s)
    if a is None:
        return None
    t = a.task
    return TaskOut(task_id=t.task_id, prompt_id=t.prompt_id, prompt=t.prompt, criterion=t.criterion,
                   completions=cards(t, shown_order(labeler, t)), expires_at=a.expires_at)


def progress(store: FeedbackStore, labeler: str) -> ProgressOut:
    p = store.progress()
    mine = sum(r.current for r in store.history(labeler))
    return ProgressOut(tasks=p.tasks, rankings_needed=p.rankings_needed, rankings_done=p.rankings_done,
                       tasks_complete=p.tasks_complete, mine=mine)


def _extras(body: RankingIn | CorrectionIn) -> dict:
    return dict(fail_reasons={c: r.strip() for c, r in body.fail_reasons.items() if r.strip()} or None,
                comment=body.comment.strip() or None, checked_facts=body.checked_facts)


@router.get("/me", response_model=MeOut)
def me(request: Request, s: Session = Depends(session)) -> MeOut:
    store = request.app.state.store
    latest = store.latest_guideline()
    return MeOut(name=s.name, role=s.labeler.role, csrf_token=s.csrf, guideline_version=latest and latest.version,
                 guideline_confirmed=unconfirmed_guideline(store, s.name) is None)


@router.get("/task", response_model=NextTaskOut)
def get_task(request: Request, s: Session = Depends(session)) -> NextTaskOut:
    _require_guideline(request.app.state.store, s.name)
    return NextTaskOut(task=next_task(request, s.name), progress=progress(request.app.state.store, s.name))


@router.post("/rankings", response_model=RankingOut, status_code=201)
def post_ranking(body: RankingIn, request: Request, s: Session = Depends(checked_session)) -> RankingOut:
    """Rank the task held for you; the time spent is measured here, from the assignment to now. A task
    not (or no longer) held by you is refused with 409, and nothing else happens."""
    store = request.app.state.store
    version = _require_guideline(store, s.name)
    task = store.get_task(body.task_id)
    with writing(request):
        ranking_id = store.submit_ranking(s.name, task.task_id, body.marks, shown_order(s.name, task), **_extras(body),
                                          guideline_version=version, held_at=datetime.now(timezone.utc))
    seconds = store.get_ranking(ranking_id).seconds_spent
    return RankingOut(ranking_id=ranking_id, task_id=task.task_id, seconds_spent=seconds)


@router.post("/rankings/{ranking_id}/corrections", response_model=RankingOut, status_code=201)
def correct_ranking(body: CorrectionIn, request: Request, s: Session = Depends(checked_session),
                    ranking_id: int = Path(ge=1, le=MAX_ROW_ID, description="your current ranking")) -> RankingOut:
    """Amend your current ranking of a task: a new ranking that supersedes it (the old one is kept)."""
    store = request.app.state.store
    version = _require_guideline(store, s.name)
    old = store.get_ranking(ranking_id)
    if old.labeler != s.name:  # blind: someone else's ranking is as good as unknown
        raise NotFoundError(f"unknown ranking {ranking_id}")
    with writing(request):
        new_id = store.submit_ranking(s.name, old.task_id, body.marks, old.shown_order, guideline_version=version,
                                      supersedes=old.ranking_id, **_extras(body))
    return RankingOut(ranking_id=new_id, task_id=old.task_id, seconds_spent=None)


@router.post("/skip", status_code=204)
def skip(body: SkipIn, request: Request, s: Session = Depends(checked_session)) -> None:
    """Give the held task back unranked: it goes to someone else, never to this labeler again."""
    with writing(request) as store:
        store.skip(s.name, body.task_id)


@router.get("/admin/report")
def report(request: Request, s: Session = Depends(admin_session)) -> dict:
    """The agreement report (the dashboard's numbers) as JSON."""
    from rlhfkit.feedback.label import feedback_report

    try:
        return feedback_report(request.app.state.store)
    except RlhfkitError as e:  # no rankings yet
        raise HTTPException(404, str(e)) from None
