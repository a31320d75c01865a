"""The labeler's pages: sign-in, guideline, ranking screen, own history and corrections."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse

from rlhfkit.feedback.store import NotFoundError
from rlhfkit.feedback.web.pages import render
from rlhfkit.feedback.web.routes_api import cards, letter, next_task, progress, unconfirmed_guideline
from rlhfkit.feedback.web.schemas import MAX_ROW_ID
from rlhfkit.feedback.web.security import (
    COOKIE, LOGIN_COOKIE, Session, checked_session, client_address, hash_token, new_token, same_secret, session,
    set_cookie,
)  # fmt: skip

router = APIRouter(tags=["pages"])

INVALID_LINK = "this sign-in link is not valid (used, replaced, expired or revoked); ask your admin for a new one"


@router.get("/")
def home(s: Session = Depends(session)):
    return RedirectResponse("/rank", status_code=303)


@router.get("/login")
def login_page(request: Request, token: str = Query(min_length=1, max_length=200, description="the invite token")):
    """Whom this link signs in, and a button to do it: a GET never signs anyone in (a page of another
    site could send a browser here with its own link: login CSRF)."""
    labeler = request.app.state.store.invited(hash_token(token))
    if labeler is None:
        request.app.state.guard.failed(client_address(request.scope), "an invalid invite link")
        raise HTTPException(403, INVALID_LINK)
    nonce = new_token()
    response = render(request, "login.html", name=labeler.name, token=token, nonce=nonce)
    set_cookie(response, request, LOGIN_COOKIE, nonce, max_age=600, path="/login")
    return response


@router.post("/login")
def login(request: Request, token: str = Form(min_length=1, max_length=200),
          csrf: str = Form(min_length=1, max_length=200, description="the login page's pre-session nonce")):
    """Use the invite up for a session: only from the login page itself, in the browser that opened it."""
    own_origin = f"{request.url.scheme}://{request.url.netloc}"
    other_site = request.headers.get("sec-fetch-site") in ("cross-site", "same-site")
    if other_site or request.headers.get("origin", own_origin) != own_origin:  # ("null" too: a sandboxed page)
        raise HTTPException(403, "signing in works from your invite link's page only; open the link again")
    if not same_secret(csrf, request.cookies.get(LOGIN_COOKIE, "")):
        raise HTTPException(403, "the sign-in page has expired or was opened elsewhere; open your link again")
    session_id, settings = new_token(), request.app.state.settings
    try:
        request.app.state.store.redeem_invite(hash_token(token), hash_token(session_id), settings.session_ttl_s)
    except NotFoundError:
        request.app.state.guard.failed(client_address(request.scope), "an invalid invite link")
        raise HTTPException(403, INVALID_LINK) from None
    response = RedirectResponse("/rank", status_code=303)
    set_cookie(response, request, COOKIE, session_id, max_age=settings.session_ttl_s)
    response.delete_cookie(LOGIN_COOKIE, path="/login", httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request, s: Session = Depends(checked_session)):
    request.app.state.store.end_session(hash_token(s.secret))
    response = render(request, "signed_out.html", status_code=200, message="You are signed out.")
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


@router.get("/guideline")
def guideline(request: Request, s: Session = Depends(session)):
    store = request.app.state.store
    return render(request, "guideline.html", s=s, guideline=store.latest_guideline(),
                  to_confirm=unconfirmed_guideline(store, s.name))


@router.post("/guideline/confirm")
def confirm_guideline(request: Request, version: int = Form(ge=1, le=MAX_ROW_ID),
                      s: Session = Depends(checked_session)):
    request.app.state.store.confirm_guideline(s.name, version)
    return RedirectResponse("/rank", status_code=303)


@router.get("/rank")
def rank(request: Request, s: Session = Depends(session)):
    store = request.app.state.store
    if unconfirmed_guideline(store, s.name) is not None:
        return RedirectResponse("/guideline", status_code=303)
    task = next_task(request, s.name)
    if task is None:
        return render(request, "done.html", s=s, progress=progress(store, s.name))
    return render(request, "rank.html", s=s, task=task, cards=task.completions, progress=progress(store, s.name),
                  correcting=None)


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


@router.get("/history/{ranking_id}/correct")
def correct(request: Request, ranking_id: int = Path(ge=1, le=MAX_ROW_ID), s: Session = Depends(session)):
    """The ranking screen again, filled in with your current ranking of the task, to amend it."""
    store = request.app.state.store
    if unconfirmed_guideline(store, s.name) is not None:
        return RedirectResponse("/guideline", status_code=303)
    old = store.get_ranking(ranking_id)
    if old.labeler != s.name:  # blind: someone else's ranking is as good as unknown
        raise NotFoundError(f"unknown ranking {ranking_id}")
    if not old.current:
        raise HTTPException(409, "this ranking was corrected already: correct its latest version (see your history)")
    task = store.get_task(old.task_id)
    return render(request, "rank.html", s=s, task=task, cards=cards(task, old.shown_order),
                  progress=progress(store, s.name), correcting=old)
