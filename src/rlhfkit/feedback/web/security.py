"""Tokens, sessions, CSRF and security headers.

A labeler signs in with a personal link ``/login?token=T``; only sha256(T) is stored. The session
cookie holds T itself (HttpOnly, SameSite=Strict), so there is no server-side session table and a
restart signs nobody out. Scripts and API clients may send ``Authorization: Bearer T`` instead.

CSRF: a cookie-authenticated POST must also carry ``X-CSRF-Token`` (or a ``csrf`` form field) equal
to HMAC(T, "csrf"), which a page of another site can neither read nor compute — the synchronizer
token pattern without server state (OWASP CSRF Prevention Cheat Sheet). SameSite=Strict is the
second wall. Bearer requests need no CSRF token: browsers never attach that header by themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request

from rlhfkit.feedback.store import Labeler

COOKIE = "rlhfkit_session"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the login URL carries the token: never send it onwards
    (b"x-frame-options", b"DENY"),
]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(token: str) -> str:
    return hmac.new(token.encode(), b"rlhfkit-csrf", hashlib.sha256).hexdigest()


class SecurityHeaders:
    """ASGI middleware adding the CSP and friends to every response (pages, JSON, static files, errors)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        # Pages and API answers carry the CSRF token and labelers' data: no cache may keep them.
        extra = HEADERS if scope["path"].startswith("/static/") else HEADERS + [(b"cache-control", b"no-store")]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


class NotSignedIn(Exception):
    """No valid token: the app answers 401 (a page asking for the invite link, or JSON)."""


@dataclass(frozen=True)
class Session:
    labeler: Labeler
    token: str
    via_cookie: bool

    @property
    def name(self) -> str:
        return self.labeler.name

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


def session(request: Request) -> Session:
    """The signed-in labeler, from the Bearer header or the session cookie."""
    auth = request.headers.get("authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    token = bearer or request.cookies.get(COOKIE, "")
    labeler = request.app.state.store.labeler_by_token_hash(hash_token(token)) if token else None
    if labeler is None:
        raise NotSignedIn()
    return Session(labeler, token, via_cookie=not bearer)


async def checked_session(request: Request, s: Session = Depends(session)) -> Session:
    """:func:`session`, refusing a cookie-authenticated state change without the CSRF token."""
    if request.method not in ("GET", "HEAD", "OPTIONS") and s.via_cookie:
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            sent = (await request.form()).get("csrf")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, s.csrf):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return s


def admin_session(s: Session = Depends(checked_session)) -> Session:
    if s.labeler.role != "admin":
        raise HTTPException(403, "this page is for admins")
    return s
