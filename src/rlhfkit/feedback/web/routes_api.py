"""The JSON API: what the ranking screen's script (and any scripted client) calls.

Assignment and submission live here; the HTML ranking page renders the same :func:`next_task`.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timezone
from string import ascii_uppercase

from fastapi import APIRouter, Depends, HTTPException, Request

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.store import FeedbackStore, Task
from rlhfkit.feedback.web.schemas import CompletionOut, MeOut, NextTaskOut, ProgressOut, RankingIn, RankingOut, SkipIn, TaskOut
from rlhfkit.feedback.web.security import Session, admin_session, checked_session, session

router = APIRouter(prefix="/api", tags=["api"])

# The hot path's writes (assign, submit) queue here, one thread at a time. SQLite lets one writer in
# and the others wait in its busy handler, which sleeps in growing steps (up to 100 ms) before trying
# again (sqlite3 sqliteDefaultBusyCallback): under 100 concurrent labelers that idling halved the
# throughput and tripled the p99 latency (bench/label_load.py). Other processes still get the busy wait.
WRITES = threading.Lock()


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


def next_task(store: FeedbackStore, labeler: str, ttl_s: float) -> TaskOut | None:
    """The task held for this labeler (assigning one if none is held); None when none is left."""
    with WRITES:
        a = store.assign(labeler, ttl_s=ttl_s)
    if a is None:
        return None
    texts = dict(a.task.completions)
    return TaskOut(
        task_id=a.task.task_id, prompt_id=a.task.prompt_id, prompt=a.task.prompt, criterion=a.task.criterion,
        completions=[CompletionOut(letter=letter(i), completion_id=c, text=texts[c])
                     for i, c in enumerate(shown_order(labeler, a.task))],
        expires_at=a.expires_at,
    )  # fmt: skip


def progress(store: FeedbackStore, labeler: str) -> ProgressOut:
    p = store.progress()
    mine = sum(r.current for r in store.history(labeler))
    return ProgressOut(tasks=p.tasks, rankings_needed=p.rankings_needed, rankings_done=p.rankings_done,
                       tasks_complete=p.tasks_complete, mine=mine)


def submit(store: FeedbackStore, labeler: str, body: RankingIn, ttl_s: float) -> RankingOut:
    """Store a ranking of the task held for this labeler; time spent = assignment to now, measured here."""
    version = _require_guideline(store, labeler)
    with WRITES:
        now = datetime.now(timezone.utc)
        # assign() hands back the labeler's open assignment unchanged; anything else means this task is
        # not (or no longer) theirs: already ranked, expired and handed on, or never assigned.
        held = store.assign(labeler, now=now, ttl_s=ttl_s)
        if held is None or held.task.task_id != body.task_id:
            raise HTTPException(409, f"task {body.task_id} is not assigned to you (already ranked, or the hold "
                                     "expired); reload to get your current task")
        seconds = max(0.0, (now.replace(tzinfo=None) - held.created_at).total_seconds())
        ranking_id = store.submit_ranking(
            labeler, body.task_id, body.marks, shown_order(labeler, held.task),
            fail_reasons={c: r.strip() for c, r in body.fail_reasons.items() if r.strip()} or None,
            guideline_version=version, seconds_spent=seconds, comment=body.comment.strip() or None,
            checked_facts=body.checked_facts,
        )  # fmt: skip
    return RankingOut(ranking_id=ranking_id, task_id=body.task_id, seconds_spent=seconds)


@router.get("/me", response_model=MeOut)
def me(request: Request, s: Session = Depends(session)) -> MeOut:
    store = request.app.state.store
    latest = store.latest_guideline()
    return MeOut(name=s.name, role=s.labeler.role, csrf_token=s.csrf, guideline_version=latest and latest.version,
                 guideline_confirmed=unconfirmed_guideline(store, s.name) is None)


@router.get("/task", response_model=NextTaskOut)
def get_task(request: Request, s: Session = Depends(session)) -> NextTaskOut:
    store = request.app.state.store
    _require_guideline(store, s.name)
    task = next_task(store, s.name, request.app.state.settings.assignment_ttl_s)
    return NextTaskOut(task=task, progress=progress(store, s.name))


@router.post("/rankings", response_model=RankingOut, status_code=201)
def post_ranking(body: RankingIn, request: Request, s: Session = Depends(checked_session)) -> RankingOut:
    return submit(request.app.state.store, s.name, body, request.app.state.settings.assignment_ttl_s)


@router.post("/skip", status_code=204)
def skip(body: SkipIn, request: Request, s: Session = Depends(checked_session)) -> None:
    """Give the held task back unranked: it goes to someone else, never to this labeler again."""
    with WRITES:
        request.app.state.store.skip(s.name, body.task_id)


@router.get("/admin/report")
def report(request: Request, s: Session = Depends(admin_session)) -> dict:
    """The agreement report (the dashboard's numbers) as JSON."""
    from rlhfkit.feedback.label import feedback_report

    try:
        return feedback_report(request.app.state.store)
    except RlhfkitError as e:  # no rankings yet
        raise HTTPException(404, str(e)) from None
