"""``create_app(store_url)``: the labeling web app over one feedback store."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.store import BusyError, ConflictError, FeedbackStore, NotFoundError
from rlhfkit.feedback.web import routes_admin, routes_api, routes_labeler
from rlhfkit.feedback.web.pages import HERE, error_response
from rlhfkit.feedback.web.security import (
    HEADERS, NO_STORE, BodyLimit, NotSignedIn, SecurityHeaders, SignInGate, SignInGuard, signed_out,
)  # fmt: skip
from rlhfkit.feedback.web.settings import Settings

RETRY_AFTER_S = 2  # what a 503 (the database busy with other writes) asks a client to wait


def _http_error(request: Request, exc: HTTPException):
    return error_response(request, exc.status_code, str(exc.detail), headers=exc.headers)  # e.g. Allow on a 405


def _store_error(request: Request, exc: RlhfkitError):
    # A refused store write (StoreError, a bad upload's RecordError) is the user's to fix; a busy database is not.
    if isinstance(exc, BusyError):
        return error_response(request, 503, str(exc), headers={"retry-after": str(RETRY_AFTER_S)})
    status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 400
    return error_response(request, status, str(exc))


def _server_error(request: Request, exc: Exception):
    """A bug or a broken database: no details to the client (the server log has the traceback). This
    answer is sent from outside every middleware, so it carries the security headers itself."""
    response = error_response(request, 500, "something went wrong on the server; the admin can see why in its log")
    response.headers.update({k.decode(): v.decode() for k, v in HEADERS + [NO_STORE]})
    return response


def _validation_message(exc: RequestValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'request'}: {e['msg']}" for e in exc.errors())


def create_app(store_url: str, settings: Settings | None = None) -> FastAPI:
    """The app on the store at ``store_url`` (a path or a sqlite:/// or postgresql:// URL), opened now."""
    settings = settings or Settings()
    store = FeedbackStore(store_url, busy_timeout_s=settings.busy_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close()

    # No /docs: Swagger UI loads scripts from a CDN, which the CSP (rightly) blocks. /openapi.json stays.
    # No slash redirects: Starlette builds their Location from the Host header.
    app = FastAPI(title="rlhfkit labeling", lifespan=lifespan, docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.store, app.state.settings = store, settings
    app.state.guard = SignInGuard(settings.signin_failures_per_minute)
    # Outermost last: headers on everything → known hosts only (DNS rebinding) → body caps → who is asking.
    app.add_middleware(SignInGate, store=store, guard=app.state.guard)
    caps = {"/admin/import": round(settings.max_upload_mb * 1e6)}
    app.add_middleware(BodyLimit, default_bytes=round(settings.max_body_kb * 1e3), per_path=caps)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (routes_labeler, routes_api, routes_admin):
        app.include_router(module.router)

    app.add_exception_handler(RlhfkitError, _store_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, lambda r, e: error_response(r, 422, _validation_message(e)))
    app.add_exception_handler(NotSignedIn, lambda r, e: signed_out(r))
    app.add_exception_handler(Exception, _server_error)
    return app
