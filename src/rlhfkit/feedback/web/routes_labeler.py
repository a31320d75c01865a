"""The labeler's pages: sign-in, guideline, ranking screen, own history."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from rlhfkit.feedback.web.pages import render
from rlhfkit.feedback.web.routes_api import letter, next_task, progress, unconfirmed_guideline
from rlhfkit.feedback.web.security import COOKIE, Session, checked_session, hash_token, session

router = APIRouter(tags=["pages"])


@router.get("/")
def home(s: Session = Depends(session)):
    return RedirectResponse("/rank", status_code=303)


@router.get("/login")
def login(request: Request, token: str = Query(min_length=1, max_length=200)):
    labeler = request.app.state.store.labeler_by_token_hash(hash_token(token))
    if labeler is None:
        raise HTTPException(403, "this sign-in link is not valid; ask your admin for a new one")
    # A page, not a redirect: a SameSite=Strict cookie set during a navigation that began on another
    # site (a mail client) is not sent on the redirect that follows; a click here is same-site.
    response = render(request, "login.html", name=labeler.name)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=90 * 86400,
                        secure=request.app.state.settings.secure_cookies)
    return response


@router.post("/logout")
def logout(request: Request, s: Session = Depends(checked_session)):
    response = render(request, "signed_out.html", status_code=200, message="You are signed out.")
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


@router.get("/guideline")
def guideline(request: Request, s: Session = Depends(session)):
    store = request.app.state.store
    return render(request, "guideline.html", s=s, guideline=store.latest_guideline(),
                  to_confirm=unconfirmed_guideline(store, s.name))


@router.post("/guideline/confirm")
def confirm_guideline(request: Request, version: int = Form(ge=1, le=2**31), s: Session = Depends(checked_session)):
    request.app.state.store.confirm_guideline(s.name, version)
    return RedirectResponse("/rank", status_code=303)


@router.get("/rank")
def rank(request: Request, s: Session = Depends(session)):
    store = request.app.state.store
    if unconfirmed_guideline(store, s.name) is not None:
        return RedirectResponse("/guideline", status_code=303)
    task = next_task(store, s.name, request.app.state.settings.assignment_ttl_s)
    return render(request, "rank.html" if task else "done.html", s=s, task=task, progress=progress(store, s.name))


@router.get("/history")
def history(request: Request, s: Session = Depends(session)):
    """The labeler's own rankings only: nobody sees another's ranking of a task (blind)."""
    store = request.app.state.store
    prompts = {r.ranking_id: r.prompt for r in store.current_rankings(s.name)}
    rows = []
    for r in store.history(s.name):
        marks = [(letter(i), r.marks[cid]) for i, cid in enumerate(r.shown_order)]  # as the labeler saw them
        rows.append({"r": r, "prompt": prompts.get(str(r.ranking_id), ""), "marks": marks})
    return render(request, "history.html", s=s, rows=rows)
