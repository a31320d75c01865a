"""Sign-in, sessions, CSRF, body limits, throttling and security headers.

A labeler's invite link ``/login?token=T`` is a one-time exchange: the page it opens asks them to
confirm who they sign in as, and that POST (same-origin only) uses the invite up and starts a
server-side session. The session cookie holds a random id S (HttpOnly, SameSite=Strict, Secure over
HTTPS); the store keeps only sha256(S), with an expiry, and ends it on sign-out or ``label revoke``.
Scripts may send ``Authorization: Bearer S`` instead of the cookie.

CSRF: a cookie-authenticated POST must also carry ``X-CSRF-Token`` (or a ``csrf`` form field) equal
to HMAC(S, "csrf"), which a page of another site can neither read nor compute (OWASP CSRF Prevention
Cheat Sheet, synchronizer token). Sign-in itself is guarded against login CSRF by a pre-session
(OWASP: "Login CSRF"): the login page sets a SameSite=Strict cookie its form must echo, and a
cross-site POST /login is refused by its Origin / Sec-Fetch-Site headers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from rlhfkit.feedback.store import Labeler
from rlhfkit.feedback.web.pages import error_response

log = logging.getLogger("rlhfkit.feedback.web")

COOKIE = "rlhfkit_session"
LOGIN_COOKIE = "rlhfkit_login"  # the pre-session: ties the sign-in form to the browser that opened the link
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    # The login URL carries the token: never send it to another site. (Not no-referrer: under it a
    # browser sends "Origin: null" even on our own forms, and POST /login checks the Origin.)
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
NO_STORE = (b"cache-control", b"no-store")  # pages and API answers carry CSRF tokens and labelers' data
HSTS = (b"strict-transport-security", b"max-age=31536000")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"rlhfkit-csrf", hashlib.sha256).hexdigest()


def same_secret(sent, expected: str) -> bool:
    """Constant-time comparison of what a client sent (any text, or nothing) with a secret we made."""
    # compare_digest refuses str with non-ASCII characters (a TypeError, then a 500): compare bytes.
    return isinstance(sent, str) and hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode())


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"  # behind a TLS proxy: uvicorn's proxy headers make it https


def set_cookie(response, request: Request, name: str, value: str, max_age: float, path: str = "/") -> None:
    secure = request.app.state.settings.secure_cookies or is_https(request)
    response.set_cookie(name, value, max_age=math.ceil(max_age), path=path, httponly=True, samesite="strict",
                        secure=secure)


def client_address(scope) -> str:
    return (scope.get("client") or ("unknown",))[0]


class SecurityHeaders:
    """ASGI middleware adding the CSP and friends to every response (pages, JSON, static files, errors)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = HEADERS if scope["path"].startswith("/static/") else HEADERS + [NO_STORE]
        extra = extra + [HSTS] if scope.get("scheme") == "https" else extra

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(HTTPException):
    def __init__(self, cap: int):
        super().__init__(413, f"the request body is larger than {cap / 1e6:g} MB, this address's limit")


class BodyLimit:
    """ASGI middleware capping the request body per route, before anything reads it: a Content-Length
    over the cap gets 413 without a byte read; a body sent without one (chunked) is cut off with 413
    as soon as the bytes received pass the cap. Uploads stream through here, so an import is stopped
    at the cap rather than copied whole and measured after (issue 16)."""

    def __init__(self, app, default_bytes: int, per_path: dict[str, int], respond=None):
        self.app, self.default, self.per_path = app, default_bytes, per_path
        self.respond = respond or error_response  # (request, status, detail) → response; `rlhfkit serve` answers JSON

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = self.per_path.get(scope["path"], self.default)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            too_large = BodyTooLarge(cap) if length.isdigit() else HTTPException(400, "bad Content-Length")
            return await self.respond(Request(scope), too_large.status_code, too_large.detail)(scope, receive, send)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > cap:
                raise BodyTooLarge(cap)
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge as e:  # read outside FastAPI's body parsing, which answers it itself
            if started:
                raise
            await self.respond(Request(scope), e.status_code, e.detail)(scope, receive, send)


class SignInGuard:
    """Failed sign-ins (a bad invite link, an unknown or ended session) per client address: each one is
    logged, and an address with more than ``per_minute`` in the last minute is refused (429) until it
    has fewer. The `limits` library's moving window, in memory: per server process."""

    def __init__(self, per_minute: int):
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.item, self.limiter = RateLimitItemPerMinute(per_minute), MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again; None when it may now."""
        if self.limiter.test(self.item, address):
            return None
        reset_at, _ = self.limiter.get_window_stats(self.item, address)
        return max(1, math.ceil(reset_at - time.time()))

    def failed(self, address: str, what: str) -> None:
        log.warning("failed sign-in from %s: %s", address, what)  # never the token itself
        self.limiter.hit(self.item, address)


def throttled(request: Request, retry: int):
    message = f"too many failed sign-ins from your address; try again in {retry} s"
    return error_response(request, 429, message, headers={"retry-after": str(retry)})


@dataclass(frozen=True)
class Session:
    labeler: Labeler
    secret: str  # the session id, as the client holds it
    via_cookie: bool

    @property
    def name(self) -> str:
        return self.labeler.name

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)


class SignInGate:
    """ASGI middleware: who is asking, for every request. The session from the Bearer header or the
    cookie is looked up once, here, and kept in ``request.state.session`` for the routes' dependencies.

    A request with a body (a POST but the sign-in form) is refused here, before its body is read, when
    it has no valid session (401) or, under /admin, none of an admin (403): a stranger cannot make the
    server read, parse or spool anything (issue 16: a 200 MB body was read before the 401)."""

    def __init__(self, app, store, guard: SignInGuard):
        self.app, self.store, self.guard = app, store, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/static/"):
            return await self.app(scope, receive, send)
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        secret = bearer or request.cookies.get(COOKIE, "")
        session = None
        if secret or scope["path"] == "/login":
            retry = self.guard.retry_after(client_address(scope))
            if retry is not None:
                return await throttled(request, retry)(scope, receive, send)
        if secret:
            labeler = await run_in_threadpool(self.store.session_labeler, hash_token(secret))
            if labeler is None:
                self.guard.failed(client_address(scope), "an unknown, expired or ended session")
            else:
                session = Session(labeler, secret, via_cookie=not bearer)
        scope.setdefault("state", {})["session"] = session
        if request.method not in SAFE_METHODS and scope["path"] != "/login":
            refusal = None
            if session is None:
                refusal = signed_out(request)
            elif scope["path"].startswith("/admin") and session.labeler.role != "admin":
                refusal = error_response(request, 403, "this page is for admins")
            if refusal is not None:
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


class NotSignedIn(Exception):
    """No valid session: the app answers 401 (a page asking for the invite link, or JSON)."""


def signed_out(request: Request):
    """The 401 answer; a session cookie that no longer signs in is deleted, so it is not sent again."""
    response = error_response(request, 401, "sign in with your personal invite link")
    if request.cookies.get(COOKIE):
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


def session(request: Request) -> Session:
    """The signed-in labeler (found by :class:`SignInGate`)."""
    s = request.scope.get("state", {}).get("session")
    if s is None:
        raise NotSignedIn()
    return s


async def checked_session(request: Request, s: Session = Depends(session)) -> Session:
    """:func:`session`, refusing a cookie-authenticated state change without the CSRF token."""
    if request.method not in SAFE_METHODS and s.via_cookie:
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            sent = (await request.form()).get("csrf")
        if not same_secret(sent, s.csrf):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return s


def admin_session(s: Session = Depends(checked_session)) -> Session:
    if s.labeler.role != "admin":
        raise HTTPException(403, "this page is for admins")
    return s
