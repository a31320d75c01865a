"""``create_app(store_url)``: the labeling web app over one feedback store."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.store import ConflictError, FeedbackStore, NotFoundError
from rlhfkit.feedback.web import routes_admin, routes_api, routes_labeler
from rlhfkit.feedback.web.pages import HERE, render
from rlhfkit.feedback.web.security import NotSignedIn, SecurityHeaders
from rlhfkit.feedback.web.settings import Settings


def _error(request: Request, status: int, message: str):
    """JSON for the API, a page for a person; every refusal says why."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status)
    page = "signed_out.html" if status == 401 else "error.html"
    return render(request, page, status_code=status, message=message)


def _http_error(request: Request, exc: HTTPException):
    response = _error(request, exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})  # e.g. Allow on a 405
    return response


def _status(exc: RlhfkitError) -> int:
    return 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 400


def _validation_message(exc: RequestValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'request'}: {e['msg']}" for e in exc.errors())


def create_app(store_url: str, settings: Settings | None = None) -> FastAPI:
    """The app on the store at ``store_url`` (a path or a sqlite:/// or postgresql:// URL), opened now."""
    store = FeedbackStore(store_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close()

    # No /docs: Swagger UI loads scripts from a CDN, which the CSP (rightly) blocks. /openapi.json stays.
    app = FastAPI(title="rlhfkit labeling", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.settings = settings or Settings()
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (routes_labeler, routes_api, routes_admin):
        app.include_router(module.router)

    # A refused store write (RlhfkitError: StoreError, a bad upload's RecordError) is the user's to fix.
    app.add_exception_handler(RlhfkitError, lambda r, e: _error(r, _status(e), str(e)))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, lambda r, e: _error(r, 422, _validation_message(e)))
    app.add_exception_handler(NotSignedIn, lambda r, e: _error(r, 401, "sign in with your personal invite link"))
    return app
